"""Small Kafka helpers for lessons and checks: the plumbing that is not the point of a lesson.

A lesson *about* producers uses ``confluent_kafka.Producer`` directly; these exist so that
setting up a topic or reading back what was written takes one line.

>>> from helpers import kafka
>>> topic = kafka.create_topic("orders", partitions=6)
>>> kafka.partition_count(topic)
6
>>> kafka.delete_topic(topic)
"""
from __future__ import annotations

import time

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from .config import kafka_config, unique_name
from .errors import BrokerError


def admin() -> AdminClient:
    return AdminClient(kafka_config())


def create_topic(stem: str, partitions: int = 1, replication: int = 3, config: dict | None = None) -> str:
    """Create a uniquely named topic in the learner's namespace, wait until it exists, return its name."""
    name = unique_name(stem)
    client = admin()  # keep a reference: a collected AdminClient cancels its pending futures
    try:
        client.create_topics([NewTopic(name, partitions, replication, config=config or {})])[name].result(30)
    except KafkaException as e:
        raise BrokerError(f"could not create topic {name}: {e.args[0].str()}") from None
    except TimeoutError:
        raise BrokerError(f"Kafka did not answer within 30 s at {kafka_config()['bootstrap.servers']}; "
                          "run `python -m helpers.brokers up` to start the brokers") from None
    wait_until(lambda: partition_count(name) == partitions, 30, f"topic {name} to appear")
    return name


def delete_topic(name: str) -> None:
    """Delete a topic; a topic that is already gone is fine."""
    client = admin()
    try:
        client.delete_topics([name], operation_timeout=30)[name].result(30)
    except KafkaException as e:
        if "UNKNOWN_TOPIC" not in str(e):
            raise


def partition_count(name: str) -> int:
    """How many partitions a topic has (0 when it does not exist)."""
    client = admin()
    # list every topic: asking for one by name lets the brokers auto-create it
    meta = client.list_topics(timeout=10).topics.get(name)
    return 0 if meta is None or meta.error is not None else len(meta.partitions)


def watermarks(topic: str) -> dict:
    """``{partition: (low, high)}`` of ``topic`` as the brokers report them now; ``{}`` when it does
    not exist. Messages stored in a partition = high - low. Asked through a consumer that never
    joins a group (a consumer does not auto-create the topic it asks about)."""
    c = Consumer(kafka_config(**{"group.id": unique_name("watermarks"), "enable.auto.commit": False}))
    try:
        meta = c.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return {}
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in sorted(meta.partitions)}
    finally:
        c.close()


def consume(topic: str, n: int, timeout: float = 30.0, **conf) -> list:
    """Read ``n`` messages from the start of ``topic`` with a throwaway group; return the messages."""
    consumer = Consumer(kafka_config(**{"group.id": unique_name("reader"), "auto.offset.reset": "earliest",
                                        "enable.auto.commit": False, **conf}))
    consumer.subscribe([topic])
    got, deadline = [], time.monotonic() + timeout
    try:
        while len(got) < n and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                got.append(msg)
    finally:
        consumer.close()
    return got


def wait_until(condition, timeout: float, what: str, interval: float = 0.2):
    """Poll ``condition()`` until true; raise ``BrokerError`` naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise BrokerError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return result
