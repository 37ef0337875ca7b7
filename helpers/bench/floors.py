"""The machine's physical limits, measured, so every throughput can be read as a fraction of one.

- loopback TCP bandwidth: one process streams 1 MiB writes to another over 127.0.0.1;
- loopback round trip: one byte there and back between two processes (TCP_NODELAY);
- fsync latency: append 4 KiB and ``os.fsync`` it, in the folder where the native brokers keep
  their data (``SOP_STATE_DIR``).

They are ceilings, not predictions: a broker does far more per message than a raw socket.
"""
from __future__ import annotations

import os
import socket
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

CHUNK = 1 << 20


def _sink(port_queue, seconds):
    """Receiver: accept one connection, count bytes until EOF, report (bytes, seconds)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port_queue.put(srv.getsockname()[1])
    srv.settimeout(seconds + 30)
    conn, _ = srv.accept()
    n, t0 = 0, None
    buf = bytearray(CHUNK)
    while True:
        k = conn.recv_into(buf)
        if not k:
            break
        if t0 is None:
            t0 = time.perf_counter()
        n += k
    port_queue.put((n, time.perf_counter() - (t0 or time.perf_counter())))
    conn.close()
    srv.close()


def _echo(port_queue, rounds):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port_queue.put(srv.getsockname()[1])
    srv.settimeout(60)
    conn, _ = srv.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for _ in range(rounds):
        b = conn.recv(1)
        if not b:
            break
        conn.sendall(b)
    conn.close()
    srv.close()


@contextmanager
def _peer(serve, arg):
    """Run ``serve(queue, arg)`` in another process; yield (the port it listens on, the queue)."""
    from .runner import mp_context

    ctx = mp_context()
    q = ctx.Queue()
    p = ctx.Process(target=serve, args=(q, arg), daemon=True)
    p.start()
    try:
        yield q.get(timeout=30), q
    finally:
        p.join(10)


def loopback_bandwidth(seconds: float = 0.5) -> float:
    """MiB/s one process can push to another over loopback TCP."""
    with _peer(_sink, seconds) as (port, q):
        data = b"\0" * CHUNK
        with socket.create_connection(("127.0.0.1", port)) as s:
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                s.sendall(data)
        n, took = q.get(timeout=60)
    return n / took / CHUNK if took > 0 else None


def loopback_rtt(rounds: int = 2000) -> dict:
    """Round-trip time of one byte between two processes: median and p99 in µs."""
    with _peer(_echo, rounds) as (port, _q):
        times = []
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(rounds):
                t0 = time.perf_counter_ns()
                s.sendall(b"x")
                s.recv(1)
                times.append((time.perf_counter_ns() - t0) / 1000)
    times.sort()
    return {"median_us": statistics.median(times), "p99_us": times[int(0.99 * (len(times) - 1))]}


def fsync_latency(folder: Path | None = None, count: int = 50, max_seconds: float = 1.0) -> dict:
    """Median and p99 of write-4-KiB-then-fsync, in ms, in ``folder`` (default: the state folder)."""
    from ..config import ROOT, settings

    folder = Path(folder) if folder else settings().state_dir
    if not folder.is_dir():
        folder = ROOT
    times = []
    fd, path = tempfile.mkstemp(prefix=".fsync-probe-", dir=folder)
    try:
        block = os.urandom(4096)
        end = time.perf_counter() + max_seconds
        while len(times) < count and (len(times) < 5 or time.perf_counter() < end):
            t0 = time.perf_counter_ns()
            os.write(fd, block)
            os.fsync(fd)
            times.append((time.perf_counter_ns() - t0) / 1e6)
    finally:
        os.close(fd)
        os.unlink(path)
    times.sort()
    return {"median_ms": statistics.median(times), "p99_ms": times[int(0.99 * (len(times) - 1))], "dir": str(folder)}


def measure(seconds: float = 0.5) -> dict:
    """All three floors, as one flat dict."""
    bw = loopback_bandwidth(seconds)
    rtt = loopback_rtt()
    fs = fsync_latency()
    return {"loopback_mib_per_s": bw, "loopback_rtt_us": rtt["median_us"], "loopback_rtt_p99_us": rtt["p99_us"],
            "fsync_ms": fs["median_ms"], "fsync_p99_ms": fs["p99_ms"], "fsync_dir": fs["dir"]}


def ceilings(row: dict, floors: dict) -> dict:
    """The physical ceilings (msg/s) that apply to a throughput row, by kind:

    - ``network``: every copy of a message crosses loopback once (producer -> leader, leader -> each
      follower, leader -> consumer), so msg/s <= bandwidth / (size x crossings);
    - ``round trip``: a publisher that waits for each confirm sends at most 1 / RTT messages a second;
    - ``fsync``: RabbitMQ confirms a persistent message only after an fsync, so with W messages in
      flight it confirms at most W per fsync. (Kafka acknowledges before any fsync: no such ceiling.)
    """
    out = {}
    bw = floors.get("loopback_mib_per_s")
    if bw:
        crossings = row.get("copies", 1) + (1 if row.get("consumer") else 0)
        out["network"] = bw * 2 ** 20 / (row["size"] * crossings)
    window = row.get("confirm_window")
    if row.get("system") == "rabbitmq" and window == 1 and floors.get("loopback_rtt_us"):
        out["round trip"] = 1e6 / floors["loopback_rtt_us"]
    if (row.get("system") == "rabbitmq" and row.get("persistent") and window and row.get("queue_type") != "stream"
            and floors.get("fsync_ms")):
        out["fsync"] = window * 1000 / floors["fsync_ms"]
    return out


def ceiling(row: dict, floors: dict):
    """The smallest ceiling that applies: (msg/s, kind), or (None, None) without floors."""
    found = ceilings(row, floors)
    if not found:
        return None, None
    kind = min(found, key=found.get)
    return found[kind], kind
