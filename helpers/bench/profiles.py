"""The workload matrix. ``full`` is the whole matrix (33 minutes measured on 2 cores: run it on a quiet machine);
``quick`` is the subset lesson 09 and the test suite run (about a minute and a half); ``smoke``
is the smallest run that still exercises every part (floors, both systems, both natives, latency).

Each profile is a list of cases in groups, run in this order (a latency case takes its offered
loads as fractions of the max throughput of an earlier case, named by ``of``):

- ``kafka``: maximum throughput through Kafka;
- ``rabbitmq``: maximum throughput through RabbitMQ (classic, quorum, stream);
- ``latency``: fixed-rate sweeps.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

from .runner import BenchError, Case

SIZES = (100, 1024, 16384)
FRACTIONS = (0.02, 0.1, 0.3, 0.5, 0.8)
GROUPS = ("kafka", "rabbitmq", "latency")


@dataclass(frozen=True)
class Timing:
    warmup: float  # seconds before each measurement
    duration: float  # seconds of each throughput measurement
    step: float  # seconds of each offered rate in a latency sweep
    floor_seconds: float  # seconds of the loopback bandwidth probe


def _grouped(cases):
    out = []
    for c in cases:
        g = "latency" if c.mode == "latency" else c.system
        out.append(replace(c, group=g))
    return out


def kafka_rf3(name="kafka-rf3-acks-all", **kw):
    """The durable Kafka setup: 3 copies, acks=all, min.insync.replicas=2."""
    return Case(name, "kafka", replication=3, acks="all", **kw)


def quick() -> list:
    return _grouped([
        kafka_rf3(linger_ms=5),
        Case("kafka-rf1-acks-1", "kafka", replication=1, acks="1", linger_ms=5),
        kafka_rf3("kafka-rf3-producer-only", linger_ms=5, consumer=False, native=True),
        Case("rabbitmq-classic-no-confirms", "rabbitmq", queue_type="classic", persistent=False, native=True),
        Case("rabbitmq-classic-confirm-each", "rabbitmq", queue_type="classic", persistent=True, confirm_window=1),
        Case("rabbitmq-classic-confirm-100", "rabbitmq", queue_type="classic", persistent=True, confirm_window=100,
             native=True),
        Case("rabbitmq-quorum-confirm-100", "rabbitmq", queue_type="quorum", persistent=True, confirm_window=100),
        Case("rabbitmq-stream", "rabbitmq", queue_type="stream", persistent=True, confirm_window=1000),
        kafka_rf3("kafka-latency", mode="latency", linger_ms=0, fractions=FRACTIONS, of="kafka-rf3-acks-all"),
        kafka_rf3("kafka-linger-5-latency", mode="latency", linger_ms=5, fractions=FRACTIONS, of="kafka-rf3-acks-all"),
        Case("kafka-rf1-acks-1-latency", "kafka", mode="latency", replication=1, acks="1", linger_ms=0,
             fractions=FRACTIONS, of="kafka-rf1-acks-1"),
        Case("rabbitmq-classic-latency", "rabbitmq", mode="latency", queue_type="classic",
             fractions=FRACTIONS, of="rabbitmq-classic-no-confirms"),
        Case("rabbitmq-quorum-latency", "rabbitmq", mode="latency", queue_type="quorum", persistent=True,
             confirm_window=100, fractions=FRACTIONS, of="rabbitmq-quorum-confirm-100"),
    ])


def smoke() -> list:
    return _grouped([
        kafka_rf3("kafka-rf3-producer-only", linger_ms=5, consumer=False, native=True),
        Case("rabbitmq-classic-no-confirms", "rabbitmq", queue_type="classic", native=True),
        Case("rabbitmq-classic-confirm-100", "rabbitmq", queue_type="classic", persistent=True, confirm_window=100),
        kafka_rf3("kafka-latency", mode="latency", linger_ms=0, fractions=(0.2, 0.5), of="kafka-rf3-producer-only"),
        Case("rabbitmq-classic-latency", "rabbitmq", mode="latency", fractions=(0.2, 0.5),
             of="rabbitmq-classic-no-confirms"),
    ])


def full() -> list:
    """Every combination: Kafka sizes x acks x replication x linger.ms x lz4 (each with its
    ProducerPerformance twin), RabbitMQ sizes x queue/confirm modes x prefetch (with PerfTest)."""
    cases = []
    for size, acks, rf, linger, comp in itertools.product(SIZES, ("1", "all"), (1, 3), (0, 5, 20), ("none", "lz4")):
        cases.append(Case(f"kafka-{size}B-rf{rf}-acks-{acks}-linger-{linger}-{comp}", "kafka", size=size, acks=acks,
                          replication=rf, linger_ms=linger, compression=comp, consumer=False, native=True))
    for size in SIZES:
        cases.append(kafka_rf3(f"kafka-{size}B-rf3-acks-all-e2e", size=size))
    modes = [("classic", False, None), ("classic", True, 1), ("classic", True, 100), ("classic", True, 1000),
             ("quorum", True, 100), ("quorum", True, 1000)]
    for size, (qt, persistent, window), prefetch in itertools.product(SIZES, modes, (100, 1000)):
        label = {None: "no-confirms", 1: "confirm-each"}.get(window, f"confirm-{window}")
        cases.append(Case(f"rabbitmq-{size}B-{qt}-{label}-prefetch-{prefetch}", "rabbitmq", size=size, queue_type=qt,
                          persistent=persistent, confirm_window=window, prefetch=prefetch,
                          ack_every=max(1, prefetch // 10), native=True))
    for size in SIZES:
        cases.append(Case(f"rabbitmq-{size}B-stream", "rabbitmq", size=size, queue_type="stream", persistent=True,
                          confirm_window=1000))
    fr = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
    cases += [
        kafka_rf3("kafka-latency", mode="latency", linger_ms=0, fractions=fr, of="kafka-1024B-rf3-acks-all-e2e"),
        kafka_rf3("kafka-latency-linger-5", mode="latency", linger_ms=5, fractions=fr, of="kafka-1024B-rf3-acks-all-e2e"),
        Case("rabbitmq-classic-latency", "rabbitmq", mode="latency", fractions=fr,
             of="rabbitmq-1024B-classic-no-confirms-prefetch-100"),
        Case("rabbitmq-quorum-latency", "rabbitmq", mode="latency", queue_type="quorum", persistent=True,
             confirm_window=100, fractions=fr, of="rabbitmq-1024B-quorum-confirm-100-prefetch-100"),
        Case("rabbitmq-stream-latency", "rabbitmq", mode="latency", queue_type="stream", persistent=True,
             confirm_window=1000, fractions=fr, of="rabbitmq-1024B-stream"),
    ]
    return _grouped(cases)


PROFILES = {
    "smoke": (smoke, Timing(warmup=1.0, duration=1.5, step=1.0, floor_seconds=0.3)),
    "quick": (quick, Timing(warmup=1.0, duration=2.0, step=1.5, floor_seconds=0.5)),
    "full": (full, Timing(warmup=2.0, duration=5.0, step=3.0, floor_seconds=2.0)),  # 33 minutes measured on 2 cores
}


def profile(name: str):
    """(cases, timing) of a named profile."""
    try:
        make, timing = PROFILES[name]
    except KeyError:
        raise BenchError(f"unknown profile {name!r}; choose one of: {', '.join(PROFILES)}") from None
    return make(), timing
