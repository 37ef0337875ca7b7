"""Run one benchmark case against the real brokers: create the topic/queue/stream, start the
producer and consumer processes, measure, delete what was created, and return result rows.

A *case* (:class:`Case`) fixes every setting of one workload. Two modes:

- ``throughput``: a warm-up, then one closed-loop phase (send as fast as the client can);
  reports msg/s and MiB/s acknowledged by the broker (producer) and received (consumer), and
  the CPU each process used.
- ``latency``: a warm-up, then one fixed-rate (open-loop) phase per offered rate; the consumer
  records receive time minus **intended** send time into an HdrHistogram per step.
"""
from __future__ import annotations

import multiprocessing
import time
from dataclasses import dataclass, field

from ..config import amqp_parameters, unique_name
from ..errors import CourseError
from . import stats, workers

now_ns = time.monotonic_ns


class BenchError(CourseError):
    """A benchmark could not run: bad input, a broker refused, a worker failed (says what to do)."""


@dataclass
class Case:
    """One workload. Kafka fields apply when ``system == "kafka"``, the others to RabbitMQ."""
    name: str
    system: str  # "kafka" or "rabbitmq"
    size: int = 1024  # bytes per message
    mode: str = "throughput"  # or "latency"
    consumer: bool = True  # run a consumer process next to the producer
    native: bool = False  # also run the Java tool with the same settings
    group: str = ""  # the part of a profile it belongs to (filled in by the profile)
    # Kafka
    partitions: int = 3
    replication: int = 3  # with 3, the topic gets min.insync.replicas=2
    acks: str = "all"
    linger_ms: int = 5
    compression: str = "none"
    batch_size: int | None = 1048576  # bytes per partition batch: librdkafka's default, set explicitly
    # because the Java client's default is 16 KiB, and a native twin must run the same settings
    producer_overrides: dict = field(default_factory=dict)  # any other producer properties, applied last
    consumer_overrides: dict = field(default_factory=dict)  # any other consumer properties (Kafka)
    # RabbitMQ
    queue_type: str = "classic"  # classic, quorum or stream
    persistent: bool = False
    confirm_window: int | None = None  # None: no confirms; 1: wait for each; N: N in flight
    prefetch: int = 100
    ack_every: int = 10  # consumer: acknowledge every N messages at once (multiple=True); PerfTest -A N
    # latency mode: offered rates as fractions of the max throughput of case ``of``
    fractions: tuple = ()
    of: str | None = None
    fallback_max: float = 5000.0  # msg/s, when case ``of`` has not run in this session

    def __post_init__(self):
        problems = []
        if self.system not in ("kafka", "rabbitmq"):
            problems.append(f"system must be 'kafka' or 'rabbitmq', not {self.system!r}")
        if self.mode not in ("throughput", "latency"):
            problems.append(f"mode must be 'throughput' or 'latency', not {self.mode!r}")
        if not isinstance(self.size, int) or self.size < stats.MIN_SIZE:
            problems.append(f"size must be a whole number of bytes >= {stats.MIN_SIZE} (the latency stamp), not {self.size!r}")
        if self.queue_type not in ("classic", "quorum", "stream"):
            problems.append(f"queue_type must be classic, quorum or stream, not {self.queue_type!r}")
        if self.confirm_window is not None and (not isinstance(self.confirm_window, int) or self.confirm_window < 1):
            problems.append(f"confirm_window must be None (no confirms) or a whole number >= 1, not {self.confirm_window!r}")
        if str(self.acks) not in ("0", "1", "all", "-1"):
            problems.append(f"acks must be 0, 1 or all, not {self.acks!r}")
        if not isinstance(self.prefetch, int) or self.prefetch < 1 or not 1 <= self.ack_every <= self.prefetch:
            problems.append(f"prefetch must be >= 1 and ack_every between 1 and prefetch, not {self.prefetch!r}/{self.ack_every!r}")
        if self.mode == "latency" and not self.fractions:
            problems.append("a latency case needs offered-load fractions, e.g. fractions=(0.1, 0.5)")
        if any(not 0 < f <= 2 for f in self.fractions):
            problems.append(f"fractions are shares of the max rate, between 0 and 2, not {self.fractions!r}")
        if problems:
            raise BenchError(f"case {self.name!r}: " + "; ".join(problems))

    @property
    def client(self) -> str:
        if self.system == "kafka":
            return "confluent-kafka"
        return "rstream" if self.queue_type == "stream" else "pika"

    @property
    def copies(self) -> int:
        """How many brokers keep each message."""
        if self.system == "kafka":
            return self.replication
        return 1 if self.queue_type == "classic" else 3

    def producer_conf(self) -> dict:
        conf = {"acks": str(self.acks), "linger.ms": self.linger_ms, "compression.type": self.compression,
                # as the Java client: 32 MiB of buffer (buffer.memory), at most 5 requests in flight per broker,
                # TCP_NODELAY on (librdkafka leaves Nagle's algorithm on unless told)
                "queue.buffering.max.kbytes": 32768, "max.in.flight.requests.per.connection": 5,
                "socket.nagle.disable": True}
        if self.batch_size:
            conf["batch.size"] = self.batch_size
        conf.update(self.producer_overrides)
        return conf

    def consumer_conf(self) -> dict:
        return {"socket.nagle.disable": True, **self.consumer_overrides}

    def settings(self) -> dict:
        """The settings that matter for this system (for tables and the CSV)."""
        if self.system == "kafka":
            return {"partitions": self.partitions, "replication": self.replication, "acks": str(self.acks),
                    "linger_ms": self.linger_ms, "compression": self.compression, "batch_size": self.batch_size}
        return {"queue_type": self.queue_type, "persistent": self.persistent, "confirm_window": self.confirm_window,
                "prefetch": self.prefetch if self.queue_type != "stream" else None}

    def describe(self) -> str:
        s = self.settings()
        if self.system == "kafka":
            text = f"RF{s['replication']} acks={s['acks']} linger.ms={s['linger_ms']}"
            if self.compression != "none":
                text += f" {self.compression}"
        else:
            text = self.queue_type + (" persistent" if self.persistent else " transient")
            text += {None: ", no confirms", 1: ", confirm each"}.get(self.confirm_window, f", confirm window {self.confirm_window}")
        return f"{text}, {self.size} B"


# --- processes ------------------------------------------------------------------------------

_CTX = None


def mp_context():
    """forkserver where available (a worker starts in milliseconds, with the clients imported
    once in the server), else spawn. Never plain fork: librdkafka threads do not survive it."""
    global _CTX
    if _CTX is None:
        if "forkserver" in multiprocessing.get_all_start_methods():
            _CTX = multiprocessing.get_context("forkserver")
            _CTX.set_forkserver_preload(["helpers.bench.workers"])
        else:
            _CTX = multiprocessing.get_context("spawn")
    return _CTX


def stream_endpoint() -> tuple:
    """(host, stream port, user, password) of RabbitMQ node 1's stream listener."""
    p = amqp_parameters(1)
    port = 5552 + (p.port - 5672) if p.port else 5552
    return p.host, port, p.credentials.username, p.credentials.password


class _Cpu:
    """System-wide busy fraction and the brokers' CPU over the measured window."""

    def __init__(self):
        import psutil

        self.psutil = psutil
        self.pids = broker_pids()

    def sample(self):
        ps = self.psutil
        t = ps.cpu_times()
        busy = sum(getattr(t, f) for f in ("user", "nice", "system", "irq", "softirq", "steal") if hasattr(t, f))
        brokers = 0.0
        for pid in self.pids:
            try:
                root = ps.Process(pid)
                for p in [root, *root.children(recursive=True)]:
                    c = p.cpu_times()
                    brokers += c.user + c.system
            except ps.Error:
                pass
        return time.monotonic(), busy, sum(t), brokers


def broker_pids() -> list:
    """The broker processes of the native backend (empty on docker: their CPU is not measured)."""
    try:
        from ..brokers import NativeBackend
        from ..topology import NODES

        if backend_name() != "native":
            return []
        b = NativeBackend()
        return [p for p in (b.pid(n) for n in NODES.values()) if p]
    except Exception:
        return []


_BACKEND = None


def backend_name() -> str:
    global _BACKEND
    if _BACKEND is None:
        try:
            from ..brokers import backend

            _BACKEND = backend().name
        except Exception:
            _BACKEND = "unknown"
    return _BACKEND


def _execute(case: Case, phases: list, target: str) -> dict:
    """Start the workers, run the phases, collect their results. Raises BenchError on failure."""
    ctx = mp_context()
    ctl = workers.Control(ctx, len(phases))
    kind = "stream" if case.system == "rabbitmq" and case.queue_type == "stream" else case.system
    base = {"target": target, "size": case.size, "phases": phases, "mode": case.mode}
    specs = {f"{kind}-producer": dict(base, conf=case.producer_conf(), persistent=case.persistent,
                                      confirm_window=case.confirm_window if kind != "stream" else (case.confirm_window or 1000))}
    if case.consumer or case.mode == "latency":
        specs[f"{kind}-consumer"] = dict(base, group=unique_name("bench"), partitions=case.partitions,
                                         conf=case.consumer_conf(),
                                         prefetch=case.prefetch, ack_every=case.ack_every)
    procs = {role: ctx.Process(target=workers.entry, args=(role, spec, ctl), daemon=True,
                               name=f"bench-{role}") for role, spec in specs.items()}
    for p in procs.values():
        p.start()
    roles = {r.rsplit("-", 1)[1]: r for r in procs}
    results, ready = {}, set()
    try:
        deadline = time.monotonic() + 60
        while len(ready) < len(procs):
            role, status, payload = _get(ctl, deadline, "the workers to connect", procs)
            if status == "error":
                raise BenchError(f"{case.name}: the {role} failed: {payload}")
            if status == "ready":
                ready.add(role)
            else:
                results[role] = payload
        start = now_ns() + 200_000_000  # 0.2 s for every worker to see "go"
        ctl.start_ns.value = start
        ctl.go.set()
        pacer = stats.Pacer([stats.Phase(s, r) for s, r in phases], start)
        cpu = _Cpu()
        _sleep_until_ns(pacer.bounds[1])
        c0 = cpu.sample()
        _sleep_until_ns(pacer.end_ns)
        c1 = cpu.sample()
        deadline = time.monotonic() + workers.DRAIN_SECONDS + 60
        while len(results) < len(procs):
            role, status, payload = _get(ctl, deadline, "the workers to finish", procs, results)
            if status == "error":
                raise BenchError(f"{case.name}: the {role} failed: {payload}")
            if status == "ok":
                results[role] = payload
    except BaseException:
        ctl.abort.set()
        ctl.go.set()  # release workers still waiting to start: they see the abort and stop
        raise
    finally:
        for p in procs.values():
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join(5)
    wall = c1[0] - c0[0]
    total = c1[2] - c0[2]
    return {"producer": results[roles["producer"]], "consumer": results.get(roles.get("consumer")),
            "host_cpu_busy": (c1[1] - c0[1]) / total if total > 0 else None,
            "broker_cores": (c1[3] - c0[3]) / wall if cpu.pids and wall > 0 else None}


def _get(ctl, deadline, what, procs, done=()):
    """The next message from a worker; a worker that died without a word is an error at once."""
    import queue

    while True:
        try:
            return ctl.results.get(timeout=0.25)
        except queue.Empty:
            pass
        for role, p in procs.items():
            if not p.is_alive() and role not in done:
                try:  # its last words may have been queued just before it exited
                    return ctl.results.get(timeout=1)
                except queue.Empty:
                    raise BenchError(f"the {role} process exited (code {p.exitcode}) before reporting; "
                                     "a script that runs benchmarks needs `if __name__ == '__main__':` "
                                     "(multiprocessing re-imports it in each worker)") from None
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}; is the machine overloaded? "
                             "`python -m helpers.brokers status` shows the brokers")


def _sleep_until_ns(t_ns: int) -> None:
    while (d := (t_ns - now_ns()) / 1e9) > 0:
        time.sleep(min(d, 0.1))


# --- resources ------------------------------------------------------------------------------

#: every topic, queue and stream this process created (each is deleted after its case)
CREATED = []


class Resource:
    """A uniquely named topic, queue or stream for one case; deleted on exit."""

    def __init__(self, case: Case):
        self.case = case
        self.name = None

    def __enter__(self) -> str:
        c = self.case
        stem = f"bench-{c.system[:5]}"
        if c.system == "kafka":
            from .. import kafka

            conf = {"min.insync.replicas": "2"} if c.replication >= 3 else {}
            self.name = kafka.create_topic(stem, partitions=c.partitions, replication=c.replication, config=conf)
            CREATED.append(("topic", self.name))
        else:
            self.name = unique_name(stem)
            with _channel() as ch:  # durable: RabbitMQ 4.3 refuses transient non-exclusive queues
                ch.queue_declare(self.name, durable=True, arguments={"x-queue-type": c.queue_type})
            CREATED.append(("queue", self.name))
        return self.name

    def __exit__(self, *exc):
        if self.name is None:
            return
        try:
            if self.case.system == "kafka":
                from .. import kafka

                kafka.delete_topic(self.name)
            else:
                with _channel() as ch:
                    ch.queue_delete(self.name)
        except Exception:
            pass  # a failed clean-up must not hide the result; `python -m helpers.brokers reset` removes leftovers


class _channel:
    def __enter__(self):
        import pika

        try:
            self.conn = pika.BlockingConnection(amqp_parameters(1))
        except pika.exceptions.AMQPError as e:
            raise BenchError(f"RabbitMQ is not reachable ({type(e).__name__}); run `python -m helpers.brokers up`") from None
        return self.conn.channel()

    def __exit__(self, *exc):
        if self.conn.is_open:
            self.conn.close()


# --- the two modes ----------------------------------------------------------------------------

def _cores(seconds, window):
    return None if seconds is None or window <= 0 else seconds / window


def run_throughput(case: Case, warmup: float = 1.0, duration: float = 2.0, inspect=None) -> dict:
    """Maximum throughput of one case: one result row.

    ``inspect(name)``, if given, is called with the topic or queue name after the run and before
    it is deleted; what it returns is kept in ``row["inspect"]`` (the lab's checks read the broker here).
    """
    _check_times(warmup, duration)
    phases = [(warmup, None), (duration, None)]
    with Resource(case) as target:
        raw = _execute(case, phases, target)
        seen = inspect(target) if inspect else None
    prod, cons = raw["producer"], raw["consumer"]
    rate = prod["acked"][1] / duration
    row = _row(case, "throughput")
    row.update(msgs_per_s=rate, mib_per_s=stats.mib_per_s(rate, case.size),
               consumer_msgs_per_s=cons["in_window"][1] / duration if cons else None,
               producer_cpu_cores=_cores(prod["cpu_s"], duration),
               consumer_cpu_cores=_cores(cons["cpu_s"], duration) if cons else None,
               host_cpu_busy=raw["host_cpu_busy"], broker_cores=raw["broker_cores"],
               errors=prod["errors"] + prod["unconfirmed"], sent=sum(prod["sent"]), acked=sum(prod["acked"]),
               received=sum(cons["received"]) if cons else None)
    if inspect:
        row["inspect"] = seen
    return row


def run_latency(case: Case, max_rate: float, warmup: float = 1.0, step: float = 2.0):
    """Open-loop latency at each offered rate ``fraction * max_rate``.

    Returns (rows, cdfs): one row per offered rate, and {offered rate: [(ms, fraction)]}.
    """
    _check_times(warmup, step)
    if not max_rate or max_rate <= 0:
        raise BenchError(f"{case.name}: the max rate to take fractions of must be positive, not {max_rate!r}")
    rates = [max(1.0, f * max_rate) for f in case.fractions]
    phases = [(warmup, rates[0])] + [(step, r) for r in rates]
    with Resource(case) as target:
        raw = _execute(case, phases, target)
    prod, cons = raw["producer"], raw["consumer"]
    rows, cdfs = [], {}
    for k, (rate, fraction) in enumerate(zip(rates, case.fractions), start=1):
        hist = stats.HdrHistogram.decode(cons["hists"][str(k)] if str(k) in cons["hists"] else cons["hists"][k])
        row = _row(case, "latency")
        row.update(fraction_of_max=fraction, offered_msgs_per_s=rate, max_msgs_per_s=max_rate,
                   msgs_per_s=prod["sent"][k] / step, received=cons["received"][k], lost=cons["lost"][k],
                   mib_per_s=stats.mib_per_s(prod["sent"][k] / step, case.size),
                   host_cpu_busy=raw["host_cpu_busy"], **stats.summary(hist))
        rows.append(row)
        cdfs[round(rate, 1)] = stats.cdf(hist)
    return rows, cdfs


def _row(case: Case, mode: str) -> dict:
    return {"case": case.name, "group": case.group, "system": case.system, "client": case.client, "mode": mode,
            "size": case.size, "copies": case.copies, "consumer": case.consumer or mode == "latency",
            "describe": case.describe(), **case.settings()}


def _check_times(warmup, duration):
    for name, v in (("warm-up", warmup), ("duration", duration)):
        if not isinstance(v, (int, float)) or v <= 0 or v > 600:
            raise BenchError(f"the {name} must be a number of seconds between 0 and 600, not {v!r}")
