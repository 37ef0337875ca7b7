"""Checks for lab 09, benchmarks.

Exercises 1 and 2 measure on the spot, on this machine, right now: the learner's configuration
AND the baseline it must beat, back to back, with ``helpers.bench`` (separate producer and
consumer processes, a warm-up, then a fixed measurement window). A fixed target number would
pass on a fast laptop and fail on a busy one; a ratio to a baseline measured a second earlier
does not depend on the machine. Each also reads the broker afterwards: what the producer counted
as acknowledged must really be in the topic or queue.

Exercises 3 and 4 are pure: they compare the learner's function with the reference on synthetic
series whose answers are known (HdrHistogram's own coordinated-omission correction, and a
latency sweep with a trap in it).
"""
from __future__ import annotations

import math
import random

from .. import kafka
from ..bench import Case, run_throughput
from ..bench.stats import corrected_percentile
from . import check, learner_call

WARMUP, DURATION = 0.5, 1.5  # seconds per measurement: long enough to be steady, short enough for a lab


def _rate(x: float) -> str:
    """A rate as the lesson prints it (the tests' sanitizer hides the figure, keeps the unit)."""
    if x >= 1_000_000:
        return f"{x / 1e6:.2f}M msg/s"
    return f"{x / 1000:.1f}k msg/s" if x >= 10_000 else f"{x:.0f} msg/s"


# --- exercise 1: tune a Kafka producer ------------------------------------------------------------

#: the starting point: how the Java client shipped for years (batch.size 16 KiB, linger.ms 0)
EX1_BASELINE = {"acks": "all", "linger.ms": 0, "batch.size": 16384, "compression.type": "none"}
EX1_FACTOR = 1.5
EX1_KEYS = {"linger.ms", "batch.size", "compression.type", "acks", "batch.num.messages", "compression.level",
            "queue.buffering.max.ms", "queue.buffering.max.messages", "queue.buffering.max.kbytes", "request.required.acks",
            "max.in.flight.requests.per.connection", "max.in.flight", "message.max.bytes", "sticky.partitioning.linger.ms"}
_ACKS_ALIASES = {"all": "all", "-1": "all", -1: "all", "1": "1", 1: "1", "0": "0", 0: "0"}


def _kafka_case(name: str, conf: dict) -> Case:
    """Producer-only, 1 KiB messages, a topic of 3 partitions x 3 replicas (min.insync.replicas=2).
    The case starts from the baseline; ``conf`` overrides it key by key."""
    return Case(name, "kafka", size=1024, partitions=3, replication=3, acks="all", linger_ms=0, batch_size=16384,
                consumer=False, producer_overrides=dict(conf))


def _messages_in_topic(topic: str) -> int:
    return sum(high - low for low, high in kafka.watermarks(topic).values())


@check(1, "tune the Kafka producer to at least 1.5x the baseline's throughput, keeping acks=all")
def ex1(fb, tuned):
    if fb.unset("tuned", tuned):
        return
    if not fb.expect(isinstance(tuned, dict), f"`tuned` is a {type(tuned).__name__}; it should be a dict of "
                     "producer properties, e.g. {'linger.ms': 10}"):
        return
    unknown = sorted(str(k) for k in tuned if k not in EX1_KEYS)
    fb.expect(not unknown, f"{', '.join(unknown)} {'is not a property' if len(unknown) == 1 else 'are not properties'} "
              f"this exercise tunes; use batching ({'linger.ms'}, batch.size, batch.num.messages) and compression.type")
    acks = _ACKS_ALIASES.get(tuned.get("acks", tuned.get("request.required.acks", "all")), "?")
    fb.expect(acks == "all", f"acks={tuned.get('acks', tuned.get('request.required.acks'))!r} gives up durability "
              "(the baseline waits for all in-sync replicas); keep acks=all and make each request carry more instead")
    if not fb.ok:
        return
    merged = {**EX1_BASELINE, **tuned}
    if not fb.expect(merged != EX1_BASELINE, "this is the baseline configuration itself; change how the producer "
                     "batches (linger.ms, batch.size) or compresses (compression.type)"):
        return
    from confluent_kafka import KafkaException, Producer

    from ..config import kafka_config

    ok, _ = learner_call(fb, "creating a Producer with your config", lambda: Producer(kafka_config(**{}) | merged))
    if not ok:
        return
    try:
        base = run_throughput(_kafka_case("lab09-baseline", {}), WARMUP, DURATION, inspect=_messages_in_topic)
        mine = run_throughput(_kafka_case("lab09-tuned", tuned), WARMUP, DURATION, inspect=_messages_in_topic)
    except KafkaException as e:
        fb.problems.append(f"Kafka refused the configuration: {e}")
        return
    fb.expect(mine["errors"] == 0, f"{mine['errors']} messages of yours failed or were never acknowledged")
    fb.expect(mine["inspect"] >= mine["acked"] > 0,
              f"the topic holds {mine['inspect']} messages but the producer counted {mine['acked']} acknowledged")
    ratio = mine["msgs_per_s"] / base["msgs_per_s"] if base["msgs_per_s"] else math.inf
    fb.expect(ratio >= EX1_FACTOR, f"your producer sent {_rate(mine['msgs_per_s'])}, {ratio:.2f}x the baseline's "
              f"{_rate(base['msgs_per_s'])} measured just before it; the exercise asks for {EX1_FACTOR}x. "
              "Let each request carry more: a longer linger.ms, a larger batch.size, compression")
    return (f"your producer sent {_rate(mine['msgs_per_s'])}, {ratio:.1f}x the baseline's {_rate(base['msgs_per_s'])}, "
            "with acks=all, and every acknowledged message is in the topic")


# --- exercise 2: pipelined publisher confirms --------------------------------------------------------

EX2_FACTOR = 3.0


def _rabbit_case(name: str, window) -> Case:
    """Persistent 1 KiB messages to a durable classic queue, drained by a consumer at the same time
    (prefetch 100), as in production: without one, the no-confirm publisher only fills memory."""
    return Case(name, "rabbitmq", size=1024, queue_type="classic", persistent=True, confirm_window=window,
                consumer=True)


def _queue_depth(queue: str) -> int:
    from .. import rabbit

    conn = rabbit.connect()
    try:
        return rabbit.queue_depth(conn.channel(), queue) or 0
    finally:
        conn.close()


@check(2, "pipeline publisher confirms to within 3x of publishing without confirms")
def ex2(fb, confirm_window):
    if fb.unset("confirm_window", confirm_window):
        return
    if not fb.expect(isinstance(confirm_window, int) and not isinstance(confirm_window, bool) and confirm_window >= 1,
                     f"confirm_window={confirm_window!r}: it is how many messages may wait for their confirm, "
                     "a whole number of at least 1"):
        return
    fb.expect(confirm_window <= 100_000, f"confirm_window={confirm_window} keeps up to that many messages in "
              "memory waiting for confirms; a few hundred to a few thousand is plenty")
    if not fb.ok:
        return
    plain = run_throughput(_rabbit_case("lab09-no-confirms", None), WARMUP, DURATION, inspect=_queue_depth)
    mine = run_throughput(_rabbit_case("lab09-confirms", confirm_window), WARMUP, DURATION, inspect=_queue_depth)
    fb.expect(mine["errors"] == 0, f"{mine['errors']} messages were nacked or never confirmed")
    fb.expect(mine["inspect"] + mine["received"] >= mine["acked"] > 0,
              f"the consumer received {mine['received']} messages and {mine['inspect']} are left in the queue, fewer "
              f"than the {mine['acked']} the broker confirmed")
    ratio = plain["msgs_per_s"] / mine["msgs_per_s"] if mine["msgs_per_s"] else math.inf
    fb.expect(ratio <= EX2_FACTOR, f"with confirm_window={confirm_window} the publisher sent {_rate(mine['msgs_per_s'])}, "
              f"{ratio:.1f}x slower than {_rate(plain['msgs_per_s'])} without confirms; the exercise asks for at most "
              f"{EX2_FACTOR:.0f}x. Each confirm costs a round trip and an fsync: let more messages wait for theirs at once")
    return (f"with {confirm_window} messages in flight the publisher sent {_rate(mine['msgs_per_s'])} with confirms, "
            f"{ratio:.1f}x the time per message without them ({_rate(plain['msgs_per_s'])}), and every confirmed message "
            "was consumed or is still in the queue")


# --- exercise 3: coordinated omission ---------------------------------------------------------------

def _series(seed: int, n: int, interval: float, stalls: dict) -> list:
    """Service times of a closed-loop tester: mostly near ``interval``/2, plus the given stalls."""
    rng = random.Random(seed)
    out = [round(interval * rng.uniform(0.3, 0.9), 3) for _ in range(n)]
    for i, ms in stalls.items():
        out[i] = ms
    return out


EX3_SERIES = [
    # (latencies in ms, interval in ms): the reference p99 is far above the naive one in each
    (_series(1, 5000, 1.0, {1200: 180.0, 4100: 60.0}), 1.0),
    (_series(2, 4000, 5.0, {50: 900.0}), 5.0),
    (_series(3, 3000, 2.0, {10: 30.0, 2000: 400.0, 2500: 250.0}), 2.0),
]


@check(3, "compute p99 with HdrHistogram's coordinated-omission correction")
def ex3(fb, p99_corrected):
    if fb.unset("p99_corrected", p99_corrected):
        return
    for latencies, interval in EX3_SERIES:
        want = corrected_percentile(latencies, interval, 99)
        naive = sorted(latencies)[int(0.99 * len(latencies))]
        ok, got = learner_call(fb, f"p99_corrected(<{len(latencies)} latencies>, {interval})", p99_corrected,
                               list(latencies), interval)
        if not ok:
            return
        if not fb.expect(isinstance(got, (int, float)) and not isinstance(got, bool),
                         f"p99_corrected returned {got!r}; it should return a number of milliseconds"):
            return
        if not fb.expect(abs(got - want) <= max(0.02 * want, interval),
                         f"for {len(latencies)} samples one every {interval} ms with stalls up to {max(latencies):.0f} ms, "
                         f"your p99 is {got:.2f}, the corrected p99 is {want:.2f}"
                         + (" (the uncorrected p99 is {:.2f}: the back-filled samples are missing)".format(naive)
                            if abs(got - naive) < 0.05 * max(naive, 1e-9) else "")):
            return
    return "your corrected p99 matches HdrHistogram's on all three series, where the naive p99 is under one interval"


# --- exercise 4: the highest rate within a latency budget ----------------------------------------------

EX4_CASES = [
    # (sweep, budget ms, answer): rows are offered rate and measured p99, not sorted
    ([{"offered": 4000, "p99_ms": 9.0}, {"offered": 500, "p99_ms": 1.1}, {"offered": 2000, "p99_ms": 2.5},
      {"offered": 8000, "p99_ms": 240.0}, {"offered": 1000, "p99_ms": 1.4}], 10.0, 4000),
    # a noisy dip: 3000 violates the budget, 6000 happens to meet it again; the answer stops at the first violation
    ([{"offered": 1500, "p99_ms": 3.0}, {"offered": 6000, "p99_ms": 8.0}, {"offered": 3000, "p99_ms": 14.0},
      {"offered": 750, "p99_ms": 2.0}], 10.0, 1500),
    # the budget exactly met counts as within it
    ([{"offered": 100, "p99_ms": 5.0}, {"offered": 200, "p99_ms": 5.0}, {"offered": 400, "p99_ms": 5.1}], 5.0, 200),
    # even the lightest load breaks the budget
    ([{"offered": 100, "p99_ms": 12.0}, {"offered": 300, "p99_ms": 30.0}], 10.0, None),
]


@check(4, "find the highest offered rate before p99 first breaks the budget")
def ex4(fb, max_rate_within):
    if fb.unset("max_rate_within", max_rate_within):
        return
    for sweep, budget, want in EX4_CASES:
        ok, got = learner_call(fb, "max_rate_within(...)", max_rate_within, [dict(r) for r in sweep], budget)
        if not ok:
            return
        table = ", ".join(f"{r['offered']}: {r['p99_ms']}" for r in sorted(sweep, key=lambda r: r["offered"]))
        if not fb.expect(got == want, f"for the sweep {{rate: p99 ms}} = {{{table}}} and a {budget} ms budget you "
                         f"returned {got!r}; the answer is {want!r}"):
            return
    return "your function stops at the first rate whose p99 breaks the budget, and says None when none is within it"
