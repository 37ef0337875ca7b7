"""The native baselines: the brokers' own Java load generators, run with the same settings.

- Kafka: ``org.apache.kafka.tools.ProducerPerformance`` (``kafka-producer-perf-test``) from the
  pinned Kafka jars (``.brokers/kafka-lib/``).
- RabbitMQ: PerfTest (``com.rabbitmq:perf-test``, pinned in ``native/perftest/pom.xml``), fetched
  by Maven into ``.brokers/perftest-lib/`` on first use (never committed).

Both run time-bounded here: a warm-up, then the same number of seconds as the Python run, read
off their once-a-second progress lines. They need Java 17+ and the native backend's jars; on the
docker backend, or without Java, they are skipped with a note saying why.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from ..config import ROOT, amqp_url, settings
from . import stats
from .runner import BenchError, Case, Resource, _row, backend_name

PERFTEST_POM = ROOT / "native" / "perftest" / "pom.xml"
PERFTEST_MAIN = "com.rabbitmq.perf.PerfTest"
PRODUCER_PERF = "org.apache.kafka.tools.ProducerPerformance"

# "44396 records sent, 8873.9 records/sec (8.67 MB/sec), 1872.5 ms avg latency, 3405.0 ms max latency."
_PP_LINE = re.compile(r"^(\d+) records sent, ([\d.]+) records/sec")
# "id: test-..., time 2.001 s, sent: 5912 msg/s, confirmed: 5841 msg/s, nacked: 0 msg/s, received: 2219 msg/s, ..."
_PT_LINE = re.compile(r"time:? ([\d.]+) ?s, sent: (\d+) msg/s(?:, returned: \d+ msg/s)?(?:, confirmed: (\d+) msg/s)?"
                      r"(?:, nacked: \d+ msg/s)?(?:, received: (\d+) msg/s)?")


class NativeUnavailable(BenchError):
    """A native baseline cannot run here (docker backend, no Java, no Maven): a note, not a failure."""


def perftest_version() -> str:
    return re.search(r"<perftest.version>([^<]+)</perftest.version>", PERFTEST_POM.read_text()).group(1)


def _native_backend():
    if backend_name() != "native":
        raise NativeUnavailable(f"native baselines skipped: the brokers run on the {backend_name()} backend, and the "
                                "Java tools here use the native backend's jars (run with SOP_BACKEND=native to get them)")
    from ..brokers import NativeBackend
    from ..errors import BrokerError

    b = NativeBackend()
    try:
        b.ensure_java()
    except BrokerError as e:
        raise NativeUnavailable(f"native baselines skipped: {e}") from None
    return b


def perftest_lib() -> Path:
    """The folder of PerfTest's jars, fetched with Maven on first use (stamped with the pom)."""
    lib = settings().state_dir / "perftest-lib"
    stamp = lib / ".pom"
    pom = PERFTEST_POM.read_text()
    if stamp.exists() and stamp.read_text() == pom:
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise NativeUnavailable("RabbitMQ PerfTest skipped: Maven (`mvn`) is needed once to fetch it "
                                "(e.g. `apt-get install maven`)")
    if lib.exists():
        shutil.rmtree(lib)
    proc = subprocess.run([mvn, "-q", "-B", "-f", str(PERFTEST_POM), "dependency:copy-dependencies",
                           f"-DoutputDirectory={lib}", "-DincludeScope=runtime"], capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise NativeUnavailable(f"RabbitMQ PerfTest skipped: Maven could not fetch perf-test {perftest_version()}: {tail}")
    stamp.write_text(pom)
    return lib


class _Lines:
    """Read a child's stdout lines on a thread, each with its arrival time (monotonic) and the
    CPU seconds the child had used by then (so a window's CPU is the difference of two lines)."""

    def __init__(self, proc):
        self.proc, self.lines, self.cpu = proc, [], []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))
            self.cpu.append(_proc_cpu(self.proc.pid))

    def cores(self, first: int, last: int):
        """CPU cores the child used between line ``first`` and line ``last``."""
        c0, c1 = self.cpu[first], self.cpu[last]
        t0, t1 = self.lines[first][0], self.lines[last][0]
        return (c1 - c0) / (t1 - t0) if None not in (c0, c1) and t1 > t0 else None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.thread.join(5)


def _proc_cpu(pid):
    import psutil

    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except psutil.Error:
        return None


def kafka_producer_perf(case: Case, warmup: float = 1.0, duration: float = 2.0) -> dict:
    """Kafka's ProducerPerformance with the case's acks, linger.ms, compression and batch size."""
    b = _native_backend()
    b.ensure_jars()
    with Resource(case) as topic, tempfile.TemporaryDirectory(prefix="sop-bench-") as tmp:
        payloads = Path(tmp) / "payloads.txt"  # the same JSON-like bodies the Python producer sends
        payloads.write_bytes(b"\n".join(stats.payload_text(case.size, seed=i) for i in range(64)))
        librdkafka_only = ("queue.buffering.max.kbytes", "socket.nagle.disable")  # the Java client: buffer.memory, always NODELAY
        props = [f"{k}={v}" for k, v in case.producer_conf().items() if k not in librdkafka_only]
        cmd = b.kafka_cmd(PRODUCER_PERF, "--bootstrap-server", settings().kafka_bootstrap_servers, "--topic", topic,
                          "--num-records", "1000000000", "--throughput", "-1", "--payload-file", str(payloads),
                          "--reporting-interval", "1000", "--command-property", *props, heap="256m")
        cmd.insert(1, "-Dlog4j2.level=error")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                text=True)
        lines = _Lines(proc)
        try:
            rate, cpu, window = _windows(lines, _PP_LINE, warmup, duration, "ProducerPerformance")
        finally:
            lines.stop()
    return _native_row(case, "ProducerPerformance", rate, None, cpu, window)


def _windows(lines, pattern, warmup, duration, tool):
    """Skip the progress lines of the warm-up, then average the next ``duration`` seconds of them."""
    skip, need = max(1, round(warmup)), max(1, round(duration))
    deadline = time.monotonic() + warmup + duration + 45
    seen, records, seconds, start = 0, 0, 0.0, None
    while time.monotonic() < deadline:
        while seen < len(lines.lines):
            t, line = lines.lines[seen]
            m = pattern.search(line)
            if m:
                records_k, rate_k = int(m.group(1)), float(m.group(2))
                if skip > 0:
                    skip -= 1
                    start = seen
                else:
                    records += records_k
                    seconds += records_k / rate_k if rate_k > 0 else 0
                    need -= 1
                    if need == 0:
                        return records / seconds if seconds else 0.0, lines.cores(start, seen), t - lines.lines[start][0]
            seen += 1
        if lines.proc.poll() is not None and seen >= len(lines.lines):
            break
        time.sleep(0.05)
    raise BenchError(f"{tool} printed no progress for {warmup + duration + 45:.0f} s; "
                     "is the cluster overloaded? (`python -m helpers.brokers status`)")


def rabbitmq_perftest(case: Case, warmup: float = 1.0, duration: float = 2.0) -> dict:
    """RabbitMQ PerfTest: one publisher and (if the case has one) one consumer on a queue we declare."""
    if case.queue_type == "stream":
        raise NativeUnavailable("PerfTest speaks AMQP 0-9-1; the stream case (rstream, stream protocol) has no "
                                "matching native baseline here")
    b = _native_backend()
    lib = perftest_lib()
    seconds = max(2, round(warmup) + round(duration) + 1)
    with Resource(case) as queue:
        cmd = [b.ensure_java(), "-Xmx256m", "-cp", str(lib / "*"), PERFTEST_MAIN, "--uri", amqp_url(1),
               "-x", "1", "-y", "1" if case.consumer else "0", "-s", str(case.size), "-z", str(seconds), "-i", "1",
               "-p", "-u", queue, "-e", "", "-k", queue, "-q", str(case.prefetch)]
        if case.ack_every > 1:
            cmd += ["-A", str(case.ack_every)]
        if case.persistent:
            cmd += ["-f", "persistent"]
        if case.confirm_window:
            cmd += ["-c", str(case.confirm_window)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                text=True)
        lines = _Lines(proc)
        try:
            proc.wait(seconds + 60)
        except subprocess.TimeoutExpired:
            pass
        finally:
            lines.stop()
    sent, received, used, before = 0.0, 0.0, [], None
    for i, (_t, line) in enumerate(lines.lines):
        m = _PT_LINE.search(line)
        if not m:
            continue
        at = float(m.group(1))
        if at <= warmup:
            before = i  # the last progress line of the warm-up: the window's CPU starts here
        elif at <= warmup + duration + 0.5:
            acked = m.group(3) if case.confirm_window else m.group(2)  # with confirms, count what was confirmed
            sent += float(acked or 0)
            received += float(m.group(4) or 0)
            used.append(i)
    if not used:
        tail = " | ".join(line for _t, line in lines.lines[-3:])
        raise BenchError(f"PerfTest reported no progress after its warm-up: {tail or 'no output'}")
    n = len(used)
    cpu = lines.cores(before, used[-1]) if before is not None else None
    return _native_row(case, "PerfTest", sent / n, received / n if case.consumer else None, cpu, float(n))


def _native_row(case, tool, rate, consumer_rate, cpu, window):
    row = _row(case, "throughput")
    row.update(case=case.name + " [native]", client=tool, msgs_per_s=rate, mib_per_s=stats.mib_per_s(rate, case.size),
               consumer_msgs_per_s=consumer_rate, producer_cpu_cores=cpu, measured_s=window)
    return row
