"""Checks for lab 03: Kafka partitions and keys.

Each check looks at what the brokers hold (records read back, watermarks) or at where the real
clients put keys (librdkafka's ``murmur2_random`` partitioner, Kafka's Java producer), never only
at the Python value the learner computed.
"""
from __future__ import annotations

import json
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

from .. import kafka, partitioning
from ..config import kafka_config, unique_name
from . import check, learner_call


# --- plumbing -----------------------------------------------------------------------------

def _consumer() -> Consumer:
    """A consumer that never joins a group: it reads assigned partitions and asks for watermarks."""
    return Consumer(kafka_config(**{"group.id": unique_name("lab03-check"), "enable.auto.commit": False}))


def partition_ids(client, topic: str) -> list:
    """The topic's partition numbers, as soon as ``client``'s metadata knows them (a new topic takes a moment)."""
    def seen():
        meta = client.list_topics(topic, timeout=10).topics.get(topic)
        return meta is not None and meta.error is None and sorted(meta.partitions)
    return kafka.wait_until(seen, 30, f"topic {topic} to appear in the metadata")


def watermark_counts(topic: str) -> list:
    """Messages per partition as the brokers report them: high watermark - low watermark."""
    marks = kafka.wait_until(lambda: kafka.watermarks(topic), 30, f"topic {topic} to appear in the metadata")
    return [high - low for _p, (low, high) in sorted(marks.items())]


def read_all(topic: str, timeout: float = 20.0) -> list:
    """Every record of ``topic`` as ``(partition, offset, key, value)``, in offset order per partition.

    Assigns every partition from the beginning and reads up to each high watermark: no group
    join, so it is quick, and it stops exactly at the end instead of waiting for a timeout.
    """
    c = _consumer()
    try:
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partition_ids(c, topic)}
        todo = {p for p, end in ends.items() if end > 0}
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in todo])
        got, deadline = [], time.monotonic() + timeout
        while todo and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None or msg.error():
                continue
            got.append((msg.partition(), msg.offset(), msg.key(), msg.value()))
            if msg.offset() + 1 >= ends[msg.partition()]:
                todo.discard(msg.partition())
        return sorted(got, key=lambda r: (r[0], r[1]))
    finally:
        c.close()


def produced_placements(topic: str, keys: list, conf: dict) -> dict:
    """Produce one record per key with a producer built from ``conf``; return ``{key: partition}``."""
    placed, errors = {}, []

    def on_delivery(err, msg):
        if err is not None:
            errors.append(err.str())
        else:
            placed[msg.key()] = msg.partition()

    producer = Producer(conf)
    for key in keys:
        producer.produce(topic, key=key, value=b"probe", on_delivery=on_delivery)
    producer.flush(30)
    if errors:
        raise RuntimeError(f"{len(errors)} records failed: {errors[0]}")
    return placed


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


# --- exercise 1 ---------------------------------------------------------------------------

@check(1, "key the order events so that each order stays in one partition, in order")
def ex1(fb, key_for, topic, events):
    ok, key = learner_call(fb, "key_for(events[0])", key_for, events[0])
    if not ok:
        return
    if not fb.expect(key is not None, "`key_for(event)` returns None, so the events were produced without a key "
                     "and librdkafka spread them over the partitions; return a key (a str) from the event"):
        return
    records = read_all(topic)
    if not fb.expect(len(records) == len(events), f"topic `{topic}` holds {len(records)} records; the cell should have "
                     f"produced the {len(events)} events once: run the exercise cell again (it makes a fresh topic)"):
        return
    where, steps, unkeyed = {}, {}, 0
    for partition, _offset, key, value in records:
        event = json.loads(value)
        unkeyed += key is None
        where.setdefault(event["order_id"], set()).add(partition)
        steps.setdefault(event["order_id"], []).append(event["step_no"])
    if not fb.expect(unkeyed == 0, f"{unkeyed} of {len(records)} records on the broker have no key"):
        return
    split = sorted(o for o, ps in where.items() if len(ps) > 1)
    if split:
        o = split[0]
        fb.expect(False, f"{len(split)} of {len(where)} orders are split over several partitions (e.g. `{o}` is in "
                  f"partitions {sorted(where[o])}): every event of one order needs the same key, so use something "
                  "that is the same for all events of an order")
        return
    disordered = sorted(o for o, s in steps.items() if s != sorted(s))
    fb.expect(not disordered, f"orders {disordered[:3]} are out of order in their partition")
    used = sorted({p for ps in where.values() for p in ps})
    fb.expect(len(used) >= 3, f"all {len(records)} events landed in partition(s) {used}: each order is in one partition, "
              "but the orders are not spread over the topic's 6 partitions (at least 3 should be used); "
              "use a key that differs between orders")
    return (f"all {len(where)} orders are each in one partition and in step order, spread over partitions {used} "
            f"(the brokers hold {len(records)} records)")


# --- exercise 2 ---------------------------------------------------------------------------

def ex2_keys() -> list:
    """200 keys of 1 to 17 bytes (every tail length), some of them non-ASCII."""
    keys = []
    for i in range(200):
        text = ("xy" * (i % 5)) + str(i) + ("é" if i % 7 == 0 else "")
        keys.append(text.encode("utf-8"))
    return keys


@check(2, "implement Java's murmur2 partitioner: java_partition(key, n)")
def ex2(fb, java_partition):
    if getattr(java_partition, "__module__", "") == partitioning.__name__:
        fb.expect(False, "this is `helpers.partitioning.java_partition` from the lesson: write your own implementation")
        return
    ok, first = learner_call(fb, "java_partition(b'alice', 6)", java_partition, b"alice", 6)
    if not ok:
        return
    if not fb.expect(isinstance(first, int) and not isinstance(first, bool),
                     f"java_partition(b'alice', 6) returned {first!r}; it should return an int partition number"):
        return
    n, keys = 7, ex2_keys()
    topic = kafka.create_topic("lab03-murmur2", partitions=n)
    try:
        broker = produced_placements(topic, keys, kafka_config(partitioner="murmur2_random"))
    finally:
        kafka.delete_topic(topic)
    wrong = []
    for key in keys:
        ok, mine = learner_call(fb, f"java_partition({key!r}, {n})", java_partition, key, n)
        if not ok:
            return
        if mine != broker[key]:
            wrong.append((key, mine, broker[key]))
    if wrong:
        key, mine, real = wrong[0]
        fb.expect(False, f"{len(wrong)} of {len(keys)} keys disagree with where librdkafka's murmur2_random (Java's "
                  f"placement) put them on a {n}-partition topic, e.g. key {key!r}: you say {mine!r}, the broker has it in "
                  f"partition {real}. Check the 32-bit masking after every multiply, the little-endian 4-byte blocks, "
                  "the tail bytes, and toPositive = `h & 0x7fffffff` (not abs)")
        return
    return f"all {len(keys)} keys match the partitions librdkafka's murmur2_random gave them on a {n}-partition topic"


# --- exercise 3 ---------------------------------------------------------------------------

def _measure_skew(topic):
    counts = watermark_counts(topic)
    return max(counts) / (sum(counts) / len(counts)), counts


def _second_topic() -> str:
    """A topic with another shape: 5 partitions, one of them empty, one with its first records deleted."""
    topic = kafka.create_topic("lab03-skew-check", partitions=5)
    producer = Producer(kafka_config())
    for i in range(300):
        p = [0, 0, 0, 1, 1, 2, 3][i % 7]      # partition 4 stays empty
        producer.produce(topic, value=b"x", partition=p)
    producer.flush(30)
    admin = kafka.admin()
    for tp, future in admin.delete_records([TopicPartition(topic, 0, 60)]).items():
        future.result(30)
    return topic


@check(3, "measure a topic's skew (max / mean messages per partition) from the brokers' watermarks")
def ex3(fb, skew, topic):
    ok, value = learner_call(fb, f"skew({topic!r})", skew, topic)
    if not ok:
        return
    if not fb.expect(_is_number(value), f"skew(hot_topic) returned {value!r}; it should return a number (max / mean)"):
        return
    expected, counts = _measure_skew(topic)
    mean = sum(counts) / len(counts)
    if not fb.expect(abs(value - expected) < 1e-6 * expected,
                     f"skew(hot_topic) returned {value:.4f}, but the brokers' watermarks give {expected:.4f} "
                     f"(messages per partition = high - low = {counts}, max {max(counts)} / mean {mean:.1f}); "
                     "count high - low for every partition (the low watermark is not always 0) and take the mean "
                     "over all of them"):
        return
    other = _second_topic()
    try:
        ok, value2 = learner_call(fb, "skew() on a second topic with an empty partition and deleted records", skew, other)
        expected2, counts2 = _measure_skew(other)
    finally:
        kafka.delete_topic(other)
    if not ok:
        return
    fb.expect(_is_number(value2) and abs(value2 - expected2) < 1e-6 * expected2,
              f"on a second topic (5 partitions, one empty, partition 0's first 60 records deleted) your skew() returned "
              f"{value2!r}; the watermarks give {expected2:.4f} (high - low per partition = {counts2}). "
              "Use high - low (low is not always 0) and divide by the mean over all partitions")
    return f"skew(hot_topic) = {value:.2f} matches the brokers ({counts}), and a second, differently shaped topic matches too"


# --- exercise 4 ---------------------------------------------------------------------------

@check(4, "configure confluent-kafka to place keys where the Java client does")
def ex4(fb, java_compatible):
    if fb.unset("java_compatible", java_compatible):
        return
    if not fb.expect(isinstance(java_compatible, dict),
                     f"`java_compatible` is a {type(java_compatible).__name__}; it should be a dict of producer settings"):
        return
    conf = {**kafka_config(), **java_compatible}
    try:
        Producer(conf)
    except KafkaException as e:
        fb.expect(False, f"confluent-kafka rejects this configuration: {e.args[0].str()} (librdkafka has its own "
                  "setting names, which are not always the Java client's)")
        return
    topic = kafka.create_topic("lab03-java", partitions=6)
    try:
        keys = [str(i) for i in range(200)]
        java = partitioning.java_placements(topic, len(keys))
        python = produced_placements(topic, [k.encode() for k in keys], conf)
    finally:
        kafka.delete_topic(topic)
    if not fb.expect(len(java) == len(keys), f"the Java client delivered {len(java)} of {len(keys)} records"):
        return
    differ = [k for k in keys if python[k.encode()] != java[k]]
    if differ:
        k = differ[0]
        fb.expect(False, f"with {java_compatible}, {len(differ)} of {len(keys)} keys landed in a different partition from "
                  f"the Java client's (key '{k}': Java put it in {java[k]}, your producer in {python[k.encode()]}); "
                  "choose the librdkafka partitioner that hashes like Java")
        return
    return (f"with {java_compatible}, confluent-kafka put all {len(keys)} keys in the partitions the real Java "
            "client chose")
