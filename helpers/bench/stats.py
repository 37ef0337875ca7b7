"""The pure parts of the benchmark: message stamps, the open-loop schedule, histograms, units.

Nothing here touches a broker, so ``tests/test_bench.py`` tests it directly.

Every benchmark message starts with a 17-byte stamp: the phase it belongs to (0 = warm-up,
1, 2 ... = measured steps), its sequence number, and the time it was **meant** to be sent
(``time.monotonic_ns()``; CLOCK_MONOTONIC is one clock for every process on a Linux host).
The consumer subtracts the intended time from its own receive time, so a stall in the client,
the network or the broker shows up in the latency of every message that should have been sent
during it. A tester that timestamps the *actual* send instead stops sending during a stall and
never records the messages it did not send: that is *coordinated omission*.

>>> stamp = Stamp(size=100)
>>> body = stamp.make(phase=1, seq=7, intended_ns=123)
>>> len(body), read_stamp(body)
(100, (1, 7, 123))
"""
from __future__ import annotations

import math
import random
import struct
from dataclasses import dataclass

from hdrh.histogram import HdrHistogram

HEADER = struct.Struct("<BqQ")  # phase, sequence number, intended send time (monotonic ns)
MIN_SIZE = HEADER.size  # 17 bytes
MiB = 2 ** 20
WARMUP = 0  # the phase number of the warm-up

#: latency histograms hold microseconds from 1 µs to 120 s with 3 significant digits
HIST_LOWEST_US, HIST_HIGHEST_US, HIST_DIGITS = 1, 120_000_000, 3

_WORDS = ("order", "user", "login", "payment", "accepted", "shipped", "eu-west", "checkout", "cart", "id",
          "amount", "currency", "EUR", "status", "ts", "session", "device", "mobile", "web", "item")


def payload_text(size: int, seed: int = 0) -> bytes:
    """``size`` bytes of JSON-like text: compressible about as much as real event payloads
    (random bytes would not compress at all, a block of zeros absurdly well). No newlines."""
    rng = random.Random(seed)
    parts, n = [], 0
    while n < size:
        w = f'"{rng.choice(_WORDS)}": "{rng.choice(_WORDS)}-{rng.randrange(10 ** rng.randrange(1, 7))}", '
        parts.append(w)
        n += len(w)
    return "".join(parts).encode()[:size]


class Stamp:
    """Builds message bodies of a fixed size with the stamp in front."""

    def __init__(self, size: int, seed: int = 0):
        if size < MIN_SIZE:
            raise ValueError(f"message size {size} B is below the {MIN_SIZE} B the latency stamp needs")
        self.size = size
        self.buf = bytearray(payload_text(size, seed))

    def make(self, phase: int, seq: int, intended_ns: int) -> bytes:
        HEADER.pack_into(self.buf, 0, phase, seq, intended_ns)
        return bytes(self.buf)


def read_stamp(body) -> tuple:
    """(phase, sequence, intended send time in ns) of a benchmark message."""
    return HEADER.unpack_from(body, 0)


# --- the schedule ------------------------------------------------------------------------

@dataclass(frozen=True)
class Phase:
    """One step of a run: ``seconds`` long; ``rate`` messages/s on a fixed schedule, or None
    for "as fast as the client can" (closed loop: the intended time is the actual send time)."""
    seconds: float
    rate: float | None = None


class Pacer:
    """Decides, from the clock alone, which message is due and when it was meant to go.

    Phases follow each other from ``start_ns``: phase k covers ``[bounds[k], bounds[k+1])``.
    In a fixed-rate phase message i of the phase is due at ``bounds[k] + i / rate``; a sender that
    falls behind sends the overdue messages at once, each still carrying its own intended time.

    >>> p = Pacer([Phase(1.0, rate=2)], start_ns=0)
    >>> p.next(0), p.next(100), p.next(500_000_000), p.next(2_000_000_000)
    ((0, 0), ('wait', 500000000), (0, 500000000), None)
    """

    def __init__(self, phases, start_ns: int):
        self.phases = list(phases)
        self.bounds = [start_ns]
        for ph in self.phases:
            if ph.seconds <= 0:
                raise ValueError(f"a phase lasts a positive number of seconds, not {ph.seconds}")
            if ph.rate is not None and ph.rate <= 0:
                raise ValueError(f"a fixed rate must be positive, not {ph.rate}")
            self.bounds.append(self.bounds[-1] + int(ph.seconds * 1e9))
        self.k = 0
        self.i = 0  # messages already handed out in phase k (fixed-rate phases)
        self.sent = [0] * len(self.phases)

    @property
    def end_ns(self) -> int:
        return self.bounds[-1]

    def phase_at(self, t_ns: int) -> int | None:
        """The phase running at time ``t_ns`` (None before the start or after the end)."""
        for k in range(len(self.phases)):
            if self.bounds[k] <= t_ns < self.bounds[k + 1]:
                return k
        return None

    def intended(self, k: int, i: int) -> int:
        return self.bounds[k] + int(i * 1e9 / self.phases[k].rate)

    def next(self, now_ns: int):
        """``(phase, intended_ns)`` of the message to send now, ``("wait", until_ns)``, or None when done."""
        while self.k < len(self.phases):
            k, ph = self.k, self.phases[self.k]
            if now_ns < self.bounds[k]:
                return ("wait", self.bounds[k])
            if ph.rate is None:
                if now_ns < self.bounds[k + 1]:
                    self.sent[k] += 1
                    return (k, now_ns)
            else:
                t = self.intended(k, self.i)
                if t < self.bounds[k + 1]:
                    if t > now_ns:
                        return ("wait", t)
                    self.i += 1
                    self.sent[k] += 1
                    return (k, t)
            self.k, self.i = k + 1, 0
        return None


# --- histograms ---------------------------------------------------------------------------

def new_histogram() -> HdrHistogram:
    return HdrHistogram(HIST_LOWEST_US, HIST_HIGHEST_US, HIST_DIGITS)


def record_us(hist: HdrHistogram, micros: float) -> None:
    """Record one latency in µs, clamped into the histogram's range."""
    hist.record_value(min(max(int(micros), HIST_LOWEST_US), HIST_HIGHEST_US))


def summary(hist: HdrHistogram) -> dict:
    """p50, p99, p99.9 and max of a latency histogram, in milliseconds, and the count."""
    n = hist.get_total_count()
    if n == 0:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "p99_9_ms": None, "max_ms": None}
    return {"count": n,
            "p50_ms": hist.get_value_at_percentile(50) / 1000,
            "p99_ms": hist.get_value_at_percentile(99) / 1000,
            "p99_9_ms": hist.get_value_at_percentile(99.9) / 1000,
            "max_ms": hist.get_max_value() / 1000}


def cdf(hist: HdrHistogram) -> list:
    """[(latency ms, fraction of messages at or below it)] for plotting."""
    total = hist.get_total_count()
    out, seen = [], 0
    if total == 0:
        return out
    for item in hist.get_recorded_iterator():
        seen += item.count_at_value_iterated_to
        out.append((item.value_iterated_to / 1000, seen / total))
    return out


def corrected_percentile(latencies, expected_interval, percentile: float = 99.0) -> float:
    """The percentile of ``latencies`` after HdrHistogram's coordinated-omission correction.

    A closed-loop tester waits for each reply before sending the next request, so during a stall
    of length L it records one sample of L where a steady sender, one request every
    ``expected_interval``, would have seen L, L - interval, L - 2 interval ... The correction adds
    those missing samples back. Units are whatever ``latencies`` use (same for the interval);
    values are scaled to integer microsecond-like units internally with 3 significant digits.

    >>> corrected_percentile([1.0] * 99 + [100.0], 1.0, 99)  # one 100 ms stall: p99 is not 1 ms
    98.047
    """
    scale = 1000.0  # keep sub-unit resolution: 1.0 -> 1000
    hist = new_histogram()
    interval = int(expected_interval * scale)
    for v in latencies:
        hist.record_corrected_value(min(max(int(v * scale), HIST_LOWEST_US), HIST_HIGHEST_US), interval)
    return hist.get_value_at_percentile(percentile) / scale


# --- units ---------------------------------------------------------------------------------

def mib_per_s(msgs_per_s: float | None, size: int) -> float | None:
    """Message rate times size, in MiB/s (2**20 bytes: what benchmark charts label "MB/s")."""
    return None if msgs_per_s is None else msgs_per_s * size / MiB


def ratio(a, b):
    """a / b, or None when either is missing or b is zero."""
    if a is None or b is None or b == 0 or (isinstance(b, float) and math.isnan(b)):
        return None
    return a / b
