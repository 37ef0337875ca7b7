"""Start, stop, inspect and break the course's two 3-node clusters.

The same functions back the command line and the notebooks::

    python -m helpers.brokers up | down | status | reset | logs NODE | kill NODE | start NODE

>>> from helpers import brokers
>>> brokers.check()          # raises BrokerError that names the command to run when a cluster is down

Two backends run the same topology (``helpers.topology``): ``docker`` (``docker-compose.yml``)
and ``native`` (the Apache Kafka jars from Maven Central and the OS's ``rabbitmq-server``).
``SOP_BACKEND`` picks one; ``auto`` takes docker when a Docker engine answers.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .config import ROOT, settings
from .errors import BrokerError, CourseError
from .topology import HOST, KAFKA_NODES, NODES, RABBIT_NODES, RABBITMQ_PLUGINS

UP_COMMAND = "python -m helpers.brokers up"
POM = ROOT / "native" / "kafka" / "pom.xml"
COMPOSE = ROOT / "docker-compose.yml"
KAFKA_CLUSTER_ID = "c29wLWNvdXJzZS1rcmFmdA"  # 22 chars of base64: a fixed id for the local cluster
START_TIMEOUT = 120.0
RABBIT_BIN_DIRS = ["/usr/lib/rabbitmq/bin"]  # Debian/Ubuntu: the scripts that run as the caller
LATE_PLUGINS = ("rabbitmq_mqtt",)


def kafka_version() -> str:
    """The pinned Apache Kafka version (from ``native/kafka/pom.xml``)."""
    return re.search(r"<kafka.version>([^<]+)</kafka.version>", POM.read_text()).group(1)


def node(name: str):
    """Look a node up by name, with a message listing the valid names."""
    try:
        return NODES[name]
    except KeyError:
        raise BrokerError(f"unknown node {name!r}; valid nodes are: {', '.join(NODES)}.") from None


def port_open(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
            return True
        except OSError:
            return False


def ensure_port_free(port: int, purpose: str, grace: float = 10.0) -> None:
    """Raise ``BrokerError`` naming the port when another program still listens on it after
    ``grace`` seconds (a node of ours that just died can hold its ports a moment longer)."""
    deadline = time.monotonic() + grace
    while not _bindable(port):
        if time.monotonic() > deadline:
            raise BrokerError(
                f"port {port} on {HOST} ({purpose}) is already taken by another program; "
                f"stop that program (`ss -ltnp 'sport = :{port}'` shows which) and run `{UP_COMMAND}` again."
            )
        time.sleep(0.2)


def wait_for(condition, timeout: float, what: str, interval: float = 0.5, hint: str = ""):
    """Poll ``condition()`` until it returns a true value or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise BrokerError(f"timed out after {timeout:.0f} s waiting for {what}. {hint}".strip())
        time.sleep(interval)


def run(cmd, *, env=None, timeout=120, check=True, what=None) -> subprocess.CompletedProcess:
    """Run a command, capture its output, and turn a failure into a ``BrokerError``."""
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise BrokerError(f"`{cmd[0]}` is not installed or not on PATH.") from None
    except subprocess.TimeoutExpired:
        raise BrokerError(f"`{' '.join(map(str, cmd))}` did not finish within {timeout} s.") from None
    if check and proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise BrokerError(f"{what or ' '.join(map(str, cmd))} failed (exit {proc.returncode}): " + " | ".join(tail))
    return proc


# --- live probes (both backends) ---------------------------------------------------------

def kafka_admin(timeout: float = 5.0):
    from confluent_kafka.admin import AdminClient

    from .config import kafka_config

    return AdminClient(kafka_config(**{"socket.connection.setup.timeout.ms": int(timeout * 1000)}))


def kafka_broker_ids(timeout: float = 5.0) -> set:
    """The ids of the Kafka brokers the cluster metadata lists as alive (empty when unreachable)."""
    from confluent_kafka import KafkaException

    try:
        return set(kafka_admin(timeout).list_topics(timeout=timeout).brokers)
    except KafkaException:
        return set()


def management_get(path: str, port: int | None = None, timeout: float = 5.0):
    """GET a path of the RabbitMQ management HTTP API; ``port`` picks one local node's API."""
    import requests
    from urllib.parse import urlparse

    url = settings().management_url
    if port is not None:
        p = urlparse(url)
        url = f"{p.scheme}://{p.username or 'guest'}:{p.password or 'guest'}@{HOST}:{port}"
    response = requests.get(url + path, timeout=timeout)
    response.raise_for_status()
    return response.json()


def rabbit_node_info(n) -> dict | None:
    """Name and version of a local RabbitMQ node, from its own management API (None when down)."""
    try:
        overview = management_get("/api/overview", port=n.ports["management"], timeout=2)
    except Exception:
        return None
    return {"node": overview.get("node"), "version": overview.get("rabbitmq_version")}


def kafka_node_up(n, ids=None) -> bool:
    """A Kafka node serves when its listener accepts connections and the cluster lists it.
    (The metadata alone still lists a hard-killed broker until it is fenced, about 9 s later.)"""
    return port_open(n.ports["kafka"]) and n.index in (kafka_broker_ids(2) if ids is None else ids)


def kafka_healthy() -> bool:
    return kafka_broker_ids() >= {n.index for n in KAFKA_NODES}


def rabbit_running_nodes() -> list:
    """Names of the RabbitMQ cluster members that the management API reports as running."""
    try:
        return sorted(n["name"] for n in management_get("/api/nodes", timeout=3) if n.get("running"))
    except Exception:
        return []


def rabbit_healthy() -> bool:
    return len(rabbit_running_nodes()) >= len(RABBIT_NODES)


def check(kafka: bool = True, rabbitmq: bool = True, timeout: float = 5.0) -> dict:
    """Raise ``BrokerError`` with the command to run when a configured cluster is unreachable.

    Returns what it found, e.g. ``{"kafka_brokers": 3, "rabbitmq_nodes": 3}``.
    """
    s = settings()
    found = {}
    if kafka:
        ids = kafka_broker_ids(timeout)
        if not ids:
            raise BrokerError(
                f"Kafka is not reachable at {s.kafka_bootstrap_servers}; run `{UP_COMMAND}` "
                "(or `./course start`) to start the brokers."
            )
        found["kafka_brokers"] = len(ids)
    if rabbitmq:
        import pika

        from .config import amqp_parameters

        errors = []
        for i in range(1, len(s.amqp_urls) + 1):
            try:
                pika.BlockingConnection(amqp_parameters(i, socket_timeout=timeout, connection_attempts=1)).close()
                break
            except Exception as e:  # pika raises many types; any means "not this node"
                errors.append(type(e).__name__)
        else:
            hosts = ", ".join(re.sub(r"//[^@/]*@", "//", u) for u in s.amqp_urls)
            raise BrokerError(
                f"RabbitMQ is not reachable at {hosts}; run `{UP_COMMAND}` (or `./course start`) to start the brokers."
            )
        found["rabbitmq_nodes"] = len(rabbit_running_nodes()) or len(s.amqp_urls) - len(errors)
    return found


# --- backends ------------------------------------------------------------------------------

def _java_major(version_output: str) -> int:
    m = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if not m:
        return 0
    major = int(m.group(1))
    return int(m.group(2)) if major == 1 and m.group(2) else major


def _alive(pid: int) -> bool:
    """True for a running (not zombie) process; reaps it when it is our dead child."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


class NativeBackend:
    """Kafka from the Maven-resolved jars under ``java``; RabbitMQ from the OS package."""

    name = "native"

    def __init__(self):
        self.state = settings().state_dir
        self.lib = self.state / "kafka-lib"

    # paths and process bookkeeping
    def dir(self, n) -> Path:
        return self.state / n.name

    def pid(self, n) -> int | None:
        f = self.dir(n) / "pid"
        try:
            pid = int(f.read_text())
        except (FileNotFoundError, ValueError):
            return None
        try:  # the pid file may be stale and the pid reused: our processes carry SOP_NODE in their environment
            ours = f"SOP_NODE={n.name}\0".encode() in Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            return None
        return pid if ours and _alive(pid) else None

    def running(self, n) -> bool:
        return self.pid(n) is not None

    def spawn(self, n, cmd, env=None) -> None:
        d = self.dir(n)
        env = dict(env or os.environ, SOP_NODE=n.name)
        with open(d / "stdout.log", "ab") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, cwd=d)
        (d / "pid").write_text(str(proc.pid))

    def kill(self, n) -> None:
        pid = self.pid(n)
        if pid is not None:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            wait_for(lambda: not _alive(pid), 15, f"{n.name} to die")
            # a JVM's leader thread turns zombie before its last threads have closed the sockets
            wait_for(lambda: not any(port_open(p) for p in n.ports.values()), 15, f"{n.name}'s ports to close")

    # prerequisites
    def ensure_java(self) -> str:
        java = shutil.which("java")
        if java is None:
            raise BrokerError("Java is not installed; the native backend needs Java 17 or newer "
                              "(e.g. `apt-get install openjdk-17-jre-headless`), or use Docker.")
        out = run([java, "-version"], what="java -version")
        major = _java_major(out.stderr + out.stdout)
        if major < 17:
            raise BrokerError(f"Java {major or '?'} found at {java}; Kafka {kafka_version()} needs Java 17 or newer. "
                              "Install a newer JDK or put it first on PATH.")
        return java

    def ensure_jars(self) -> None:
        stamp = self.lib / ".pom"
        pom = POM.read_text()
        if stamp.exists() and stamp.read_text() == pom:
            return
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerError("Maven (`mvn`) is not installed; the native backend needs it once to fetch the Kafka "
                              "jars (e.g. `apt-get install maven`).")
        if self.lib.exists():
            shutil.rmtree(self.lib)
        print(f"fetching the Apache Kafka {kafka_version()} jars with Maven (first run only) ...", flush=True)
        run([mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
             f"-DoutputDirectory={self.lib}", "-DincludeScope=runtime"], timeout=900, what="mvn dependency:copy-dependencies")
        stamp.write_text(pom)

    def rabbit_bin(self) -> Path:
        """The folder with rabbitmq-server and rabbitmqctl that run as the calling user."""
        candidates = [os.environ.get("SOP_RABBITMQ_BIN"), *RABBIT_BIN_DIRS]
        if os.geteuid() != 0:  # only root gets dropped to the rabbitmq user by the /usr/sbin wrappers
            found = shutil.which("rabbitmq-server")
            candidates.append(found and str(Path(found).resolve().parent))
        for c in candidates:
            if c and (Path(c) / "rabbitmq-server").exists():
                return Path(c)
        raise BrokerError("rabbitmq-server is not installed; the native backend needs the OS package "
                          "(Debian/Ubuntu: `sudo apt-get install rabbitmq-server`; macOS: `brew install rabbitmq`), "
                          "or use Docker.")

    # Kafka
    def kafka_cmd(self, main_class: str, *args, heap="512m") -> list:
        return [self.ensure_java(), f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
                "-Djava.awt.headless=true", "-cp", str(self.lib / "*"), main_class, *args]

    def kafka_tool(self, main_class: str, *args) -> str:
        """Run one of Kafka's command-line tools from the pinned jars and return its output."""
        self.ensure_jars()
        cmd = self.kafka_cmd(main_class, *args, heap="256m")
        cmd.insert(1, "-Dlog4j2.level=error")
        return run(cmd, timeout=120, what=main_class.rsplit(".", 1)[-1]).stdout

    def write_kafka_config(self, n) -> Path:
        d = self.dir(n)
        voters = ",".join(f"{k.index}@{HOST}:{k.ports['controller']}" for k in KAFKA_NODES)
        props = f"""# generated by helpers.brokers for {n.name}; edit helpers/brokers.py instead
process.roles=broker,controller
node.id={n.index}
controller.quorum.voters={voters}
listeners=PLAINTEXT://{HOST}:{n.ports['kafka']},CONTROLLER://{HOST}:{n.ports['controller']}
advertised.listeners=PLAINTEXT://{HOST}:{n.ports['kafka']}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={d / 'data'}
num.partitions=1
default.replication.factor=3
offsets.topic.replication.factor=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
group.initial.rebalance.delay.ms=0
"""
        (d / "server.properties").write_text(props)
        # the log rolls over at 10 MB and keeps two old files: a course used for weeks creates and
        # deletes thousands of topics, each logged several times
        (d / "log4j2.properties").write_text(f"""status = warn
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = {d / 'server.log'}
appender.file.filePattern = {d / 'server.log.%i'}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 10MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 2
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
""")
        return d / "server.properties"

    def start_kafka(self, n) -> None:
        d = self.dir(n)
        d.mkdir(parents=True, exist_ok=True)
        for purpose, port in n.ports.items():
            ensure_port_free(port, f"{n.name} {purpose}")
        config = self.write_kafka_config(n)
        if not (d / "data" / "meta.properties").exists():
            run(self.kafka_cmd("kafka.tools.StorageTool", "format", "-t", KAFKA_CLUSTER_ID, "-c", str(config),
                               "--ignore-formatted", heap="256m"), what=f"formatting {n.name}'s storage")
        cmd = self.kafka_cmd("kafka.Kafka", str(config))
        cmd[1:1] = [f"-Dlog4j2.configurationFile={d / 'log4j2.properties'}", f"-Dkafka.logs.dir={d}"]
        self.spawn(n, cmd)

    # RabbitMQ
    def rabbit_env(self, n=None) -> dict:
        home = self.state / "rabbit-home"
        home.mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        want = settings().erlang_cookie
        if not cookie.exists() or cookie.read_text() != want:
            if cookie.exists():
                cookie.chmod(0o600)
            cookie.write_text(want)
            cookie.chmod(0o400)
        (home / "empty-env.conf").touch()
        env = dict(os.environ, HOME=str(home), ERL_EPMD_ADDRESS=HOST,
                   RABBITMQ_CONF_ENV_FILE=str(home / "empty-env.conf"))
        if n is not None:
            d = self.dir(n)
            env.update(
                RABBITMQ_NODENAME=self.erlang_name(n),
                RABBITMQ_NODE_IP_ADDRESS=HOST,
                RABBITMQ_NODE_PORT=str(n.ports["amqp"]),
                RABBITMQ_DIST_PORT=str(n.ports["dist"]),
                RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
                RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
                RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
                RABBITMQ_LOG_BASE=str(d / "log"),
                RABBITMQ_PID_FILE=str(d / "beam.pid"),
                RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            )
        return env

    @staticmethod
    def erlang_name(n) -> str:
        return f"{n.name}@localhost"

    def ctl(self, n, *args, timeout=60, check=True):
        return run([str(self.rabbit_bin() / "rabbitmqctl"), "-q", "-n", self.erlang_name(n), *args],
                   env=self.rabbit_env(), timeout=timeout, check=check, what=f"rabbitmqctl {args[0]} on {n.name}")

    def write_rabbit_config(self, n) -> None:
        d = self.dir(n)
        p = n.ports
        (d / "rabbitmq.conf").write_text(f"""# generated by helpers.brokers for {n.name}; edit helpers/brokers.py instead
listeners.tcp.default = {HOST}:{p['amqp']}
management.tcp.ip = {HOST}
management.tcp.port = {p['management']}
mqtt.listeners.tcp.default = {HOST}:{p['mqtt']}
stomp.listeners.tcp.1 = {HOST}:{p['stomp']}
stream.listeners.tcp.1 = {HOST}:{p['stream']}
stream.advertised_host = {HOST}
stream.advertised_port = {p['stream']}
log.file.level = info
log.console = false
cluster_name = systems-of-power
""")
        # RabbitMQ 3.10's MQTT plugin keeps a Raft cluster of its own that, when every node boots at once,
        # waits 100 s for a leader; it is enabled online once the node is up instead (see enable_late_plugins).
        boot = [p for p in RABBITMQ_PLUGINS if p not in LATE_PLUGINS]
        (d / "enabled_plugins").write_text("[" + ",".join(boot) + "].\n")

    def start_epmd(self) -> None:
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        if not port_open(4369):
            run([epmd, "-address", HOST, "-daemon"], what="starting epmd")

    def start_rabbit(self, n) -> None:
        d = self.dir(n)
        (d / "log").mkdir(parents=True, exist_ok=True)
        for purpose, port in n.ports.items():
            ensure_port_free(port, f"{n.name} {purpose}")
        self.write_rabbit_config(n)
        self.start_epmd()
        self.spawn(n, [str(self.rabbit_bin() / "rabbitmq-server")], env=self.rabbit_env(n))

    def await_rabbit(self, n, timeout=START_TIMEOUT) -> None:
        def booted():
            if not self.running(n):
                raise BrokerError(f"{n.name} stopped while starting; `python -m helpers.brokers logs {n.name}` shows why.")
            return self.ctl(n, "await_startup", "--timeout", "5", check=False, timeout=30).returncode == 0
        wait_for(booted, timeout, f"{n.name} to boot", interval=1)

    def enable_late_plugins(self, nodes) -> None:
        """Enable the plugins left out at boot, on every given node at once.

        RabbitMQ 3.10's MQTT plugin keeps client ids in a Raft cluster (``mqtt_node``). On start, a node
        that was a member asks its peers for the member list *before* it restarts its own Raft server;
        when every node does that at once, each waits 100 s for the others. Restarting the Raft servers
        first (what the plugin does next anyway) lets the plugin start in seconds.
        """
        names = ",".join(f"'{self.erlang_name(n)}'" for n in nodes)
        self.ctl(nodes[0], "eval", f"[rpc:call(N, ra, restart_server, [coordination, {{mqtt_node, N}}]) || N <- [{names}]].",
                 check=False, timeout=60)
        cmds = [[str(self.rabbit_bin() / "rabbitmq-plugins"), "-q", "-n", self.erlang_name(n), "enable", "--online",
                 *LATE_PLUGINS] for n in nodes]
        procs = [subprocess.Popen(c, env=self.rabbit_env(n), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for n, c in zip(nodes, cmds)]
        for n, p in zip(nodes, procs):
            out, _ = p.communicate(timeout=180)
            if p.returncode != 0:
                raise BrokerError(f"enabling {', '.join(LATE_PLUGINS)} on {n.name} failed: {out.strip()[-300:]}")

    def form_rabbit_cluster(self) -> None:
        """Join rabbit-2 and rabbit-3 to rabbit-1 once; membership survives restarts."""
        marker = self.state / "rabbit-clustered"
        if marker.exists():
            return
        first = RABBIT_NODES[0]
        for n in RABBIT_NODES[1:]:
            self.ctl(n, "stop_app")
            self.ctl(n, "join_cluster", self.erlang_name(first))
            self.ctl(n, "start_app")
        marker.write_text("rabbit-2 and rabbit-3 joined rabbit-1\n")

    # the interface the CLI uses
    def prepare(self, nodes) -> None:
        if any(n.system == "kafka" for n in nodes):
            self.ensure_java()
            self.ensure_jars()
        if any(n.system == "rabbitmq" for n in nodes):
            self.rabbit_bin()

    def start(self, nodes, wait=True) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        todo = [n for n in nodes if not self.running(n)]
        self.prepare(todo)
        for n in todo:  # launch everything first: the JVMs and Erlang VMs boot in parallel
            (self.start_kafka if n.system == "kafka" else self.start_rabbit)(n)
        if not wait:
            return
        rabbits = [n for n in todo if n.system == "rabbitmq"]
        crashed = []
        for n in rabbits:
            try:
                self.await_rabbit(n)
            except BrokerError:
                if self.running(n):  # still booting after the timeout: a second try would not help
                    raise
                crashed.append(n)
        # RabbitMQ 3.10 nodes that boot together can trip over each other's feature-flag sync (seen here
        # once: rabbit-2 exited with `incompatible_feature_flags`, {badmap,undefined}); a node started
        # again once its peers are up joins them normally
        for n in crashed:
            self.start_rabbit(n)
            self.await_rabbit(n)
        if rabbits and all(self.running(n) for n in RABBIT_NODES):
            self.form_rabbit_cluster()
        if rabbits:
            self.enable_late_plugins(rabbits)
        for n in todo:
            if n.system == "kafka":
                wait_for(lambda: kafka_node_up(n) or self._died(n), START_TIMEOUT,
                         f"{n.name} to join the Kafka cluster", hint=f"See `python -m helpers.brokers logs {n.name}`.")

    def _died(self, n):
        if not self.running(n):
            raise BrokerError(f"{n.name} stopped while starting; `python -m helpers.brokers logs {n.name}` shows why.")
        return False

    def stop(self, nodes) -> None:
        for n in nodes:
            pid = self.pid(n)
            if pid is None:
                continue
            if n.system == "rabbitmq":
                self.ctl(n, "stop", check=False, timeout=60)
            else:
                os.killpg(pid, signal.SIGTERM)
        for n in nodes:
            pid = self.pid(n)
            if pid is not None:
                try:
                    wait_for(lambda: not _alive(pid), 30, f"{n.name} to stop")
                except BrokerError:
                    self.kill(n)
        if not any(self.running(n) for n in RABBIT_NODES):
            epmd = shutil.which("epmd")
            names = run([epmd, "-names"], check=False).stdout if epmd and port_open(4369) else ""
            if epmd and "name " not in names and port_open(4369):
                run([epmd, "-kill"], check=False)

    def logs(self, n, lines: int) -> str:
        d = self.dir(n)
        f = d / "server.log" if n.system == "kafka" else d / "log" / f"{self.erlang_name(n)}.log"
        if not f.exists():
            f = d / "stdout.log"
        if not f.exists():
            return f"{n.name} has no log yet (it has never been started by the native backend)."
        return "\n".join(f.read_text(errors="replace").splitlines()[-lines:])

    def version(self, n) -> str:
        if n.system == "kafka":
            return kafka_version()
        info = rabbit_node_info(n)
        return info["version"] if info else "-"


class DockerBackend:
    """``docker compose`` with ``docker-compose.yml`` (official apache/kafka and rabbitmq images)."""

    name = "docker"

    @staticmethod
    def available() -> tuple:
        """(True, "") when a Docker engine and the compose plugin answer, else (False, why)."""
        if shutil.which("docker") is None:
            return False, "the `docker` command is not installed"
        try:
            info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                                  capture_output=True, text=True, timeout=10)
            if info.returncode != 0:
                return False, "no Docker engine answers (`docker info` failed)"
            comp = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=10)
            if comp.returncode != 0:
                return False, "the `docker compose` plugin is missing"
        except subprocess.TimeoutExpired:
            return False, "`docker info` did not answer within 10 s"
        return True, ""

    def compose(self, *args, timeout=600, check=True):
        return run(["docker", "compose", "-f", str(COMPOSE), *args], timeout=timeout, check=check,
                   what=f"docker compose {args[0]}")

    def running(self, n) -> bool:
        out = self.compose("ps", "--format", "json", n.name, check=False).stdout
        rows = [json.loads(line) for line in out.splitlines() if line.strip().startswith("{")]
        return any(r.get("State") == "running" for r in rows)

    def start(self, nodes, wait=True) -> None:
        args = ["up", "-d"] + (["--wait"] if wait else [])
        if len(nodes) < len(NODES):
            args += ["--no-recreate"] + [n.name for n in nodes]
        self.compose(*args)

    def stop(self, nodes) -> None:
        self.compose("stop", *[n.name for n in nodes])

    def kill(self, n) -> None:
        self.compose("kill", "-s", "SIGKILL", n.name)

    def logs(self, n, lines: int) -> str:
        return self.compose("logs", "--no-color", "--tail", str(lines), n.name).stdout

    def kafka_tool(self, main_class: str, *args) -> str:
        return self.compose("exec", "-T", "kafka-1", "/opt/kafka/bin/kafka-run-class.sh", main_class, *args).stdout

    def version(self, n) -> str:
        if n.system == "kafka":
            return kafka_version()
        info = rabbit_node_info(n)
        return info["version"] if info else "-"


def backend(name: str | None = None):
    """The backend to use: ``name``, else ``SOP_BACKEND``, else docker when an engine answers."""
    name = name or settings().backend
    if name == "native":
        return NativeBackend()
    ok, why = DockerBackend.available()
    if name == "docker":
        if not ok:
            raise BrokerError(f"the docker backend was asked for, but {why}. Start Docker, or use the native "
                              "backend (Java 17+, Maven and rabbitmq-server): `SOP_BACKEND=native " + UP_COMMAND + "`.")
        return DockerBackend()
    if name != "auto":
        raise BrokerError(f"unknown backend {name!r}; use auto, docker or native.")
    return DockerBackend() if ok else NativeBackend()


# --- the commands -----------------------------------------------------------------------

def up(backend_name: str | None = None) -> None:
    """Start both clusters and wait until every node serves; does nothing when already up."""
    b = backend(backend_name)
    missing = [n for n in NODES.values() if not b.running(n)]
    if not missing and kafka_healthy() and rabbit_healthy():
        print(f"both clusters are already up ({b.name} backend).")
        return
    t0 = time.monotonic()
    b.start(list(NODES.values()))
    wait_for(kafka_healthy, START_TIMEOUT, "all 3 Kafka brokers to serve")
    wait_for(rabbit_healthy, START_TIMEOUT, "all 3 RabbitMQ nodes to run")
    print(f"both clusters are up ({b.name} backend, {time.monotonic() - t0:.0f} s). "
          f"Kafka: {settings().kafka_bootstrap_servers}  RabbitMQ: amqp://{HOST}:5672  "
          f"management: http://{HOST}:15672 (guest/guest)")


def down(backend_name: str | None = None) -> None:
    """Stop every node of both clusters; the data stays for the next ``up``."""
    b = backend(backend_name)
    b.stop(list(NODES.values()))
    print(f"both clusters are down ({b.name} backend).")


def kill(name: str, backend_name: str | None = None) -> None:
    """Hard-kill one node (SIGKILL), as a crash would."""
    n = node(name)
    backend(backend_name).kill(n)
    print(f"{name} killed.")


def start(name: str, backend_name: str | None = None) -> None:
    """Start one node again and wait until it serves."""
    n = node(name)
    b = backend(backend_name)
    b.start([n])
    if n.system == "kafka":
        wait_for(lambda: kafka_node_up(n), START_TIMEOUT, f"{name} to rejoin the Kafka cluster")
    else:
        wait_for(lambda: rabbit_node_info(n) is not None, START_TIMEOUT, f"{name} to serve")
    print(f"{name} is up.")


def logs(name: str, lines: int = 50, backend_name: str | None = None) -> str:
    """The last ``lines`` lines of a node's log."""
    return backend(backend_name).logs(node(name), lines)


def status_rows(backend_name: str | None = None) -> list:
    """One dict per node: node, role, address, state, version."""
    b = backend(backend_name)
    alive_kafka = kafka_broker_ids(3)
    rows = []
    for n in NODES.values():
        if n.system == "kafka":
            up_ = kafka_node_up(n, alive_kafka)
        else:
            up_ = rabbit_node_info(n) is not None
        rows.append({"node": n.name, "role": n.role, "address": n.address,
                     "state": "up" if up_ else ("starting" if b.running(n) else "down"),
                     "version": b.version(n) if up_ else "-"})
    return rows


def format_table(rows: list) -> str:
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols).rstrip()]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in cols).rstrip() for r in rows]
    return "\n".join(lines)


def kraft_quorum(backend_name: str | None = None) -> dict:
    """The KRaft controller quorum, from Kafka's own ``kafka-metadata-quorum`` tool.

    Returns ``{"leader": 2, "epoch": 7, "voters": [1, 2, 3], "observers": []}``.
    (The controller id in ordinary client metadata is a random broker under KRaft, so ask the quorum.)
    """
    out = backend(backend_name).kafka_tool("org.apache.kafka.tools.MetadataQuorumCommand", "--bootstrap-server",
                                           settings().kafka_bootstrap_servers.split(",")[0], "describe", "--status")
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)

    def ids(text):
        return sorted(int(i) for i in re.findall(r'"id":\s*(\d+)', text)) or \
            sorted(int(i) for i in re.findall(r"\d+", text))

    return {"leader": int(fields["LeaderId"]), "epoch": int(fields["LeaderEpoch"]),
            "voters": ids(fields.get("CurrentVoters", "")), "observers": ids(fields.get("CurrentObservers", "[]"))}


def reset() -> dict:
    """Delete the topics, consumer groups, queues and exchanges in the learner's namespace
    (names starting with ``SOP_PREFIX-``); nothing else is touched. Returns what was deleted."""
    import requests
    from urllib.parse import quote

    from .config import owned

    check()
    deleted = {"topics": [], "groups": [], "queues": [], "exchanges": []}
    admin = kafka_admin()
    topics = [t for t in admin.list_topics(timeout=10).topics if owned(t)]
    if topics:
        for t, f in admin.delete_topics(topics, operation_timeout=30).items():
            f.result()
            deleted["topics"].append(t)
    groups = [g.group_id for g in admin.list_consumer_groups().result(timeout=10).valid if owned(g.group_id)]
    if groups:
        for g, f in admin.delete_consumer_groups(groups, request_timeout=30).items():
            f.result()
            deleted["groups"].append(g)
    base = settings().management_url
    for kind in ("queues", "exchanges"):
        for item in management_get(f"/api/{kind}?columns=name,vhost"):
            if owned(item["name"]):
                url = f"{base}/api/{kind}/{quote(item['vhost'], safe='')}/{quote(item['name'], safe='')}"
                requests.delete(url, timeout=10).raise_for_status()
                deleted[kind].append(item["name"])
    return deleted


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.brokers", description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=("auto", "docker", "native"), help="override SOP_BACKEND")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start both clusters and wait until healthy")
    sub.add_parser("down", help="stop both clusters, leaving no process behind")
    sub.add_parser("status", help="a table of every node")
    sub.add_parser("reset", help="delete what the course created (names starting with SOP_PREFIX-)")
    for name, text in (("logs", "show a node's log"), ("kill", "hard-kill a node"), ("start", "start a node")):
        p = sub.add_parser(name, help=text)
        p.add_argument("node", help=", ".join(NODES))
        if name == "logs":
            p.add_argument("-n", "--lines", type=int, default=50)
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            up(args.backend)
        elif args.command == "down":
            down(args.backend)
        elif args.command == "status":
            print(f"backend: {backend(args.backend).name}")
            print(format_table(status_rows(args.backend)))
        elif args.command == "reset":
            deleted = reset()
            for kind, names in deleted.items():
                print(f"deleted {len(names)} {kind}" + (": " + ", ".join(names) if names else ""))
        elif args.command == "logs":
            print(logs(args.node, args.lines, args.backend))
        elif args.command == "kill":
            kill(args.node, args.backend)
        elif args.command == "start":
            start(args.node, args.backend)
    except CourseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
