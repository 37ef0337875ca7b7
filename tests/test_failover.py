"""Broker control against the real clusters: kill one node of each cluster, see the cluster keep
serving, start the node again; and reset deletes only the learner's own resources."""
import pika
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import NewTopic

from helpers import brokers, config
from helpers.topology import NODES

pytestmark = pytest.mark.brokers


def produce(topic, values):
    """Produce with acks=all; return how many the brokers acknowledged."""
    acked = []
    producer = Producer(config.kafka_config(acks="all", enable_idempotence=True, message_timeout_ms=20000))
    for v in values:
        producer.produce(topic, v, on_delivery=lambda err, msg: acked.append(err is None))
    producer.flush(30)
    return sum(acked)


def consume_all(topic, expected, timeout=30):
    consumer = Consumer(config.kafka_config(group_id=config.unique_name("failover"), auto_offset_reset="earliest"))
    consumer.subscribe([topic])
    seen = []
    try:
        brokers.wait_for(lambda: _poll_into(consumer, seen) >= expected, timeout, f"{expected} messages")
    finally:
        consumer.close()
    return seen


def _poll_into(consumer, seen):
    msg = consumer.poll(0.5)
    if msg is not None and msg.error() is None:
        seen.append(msg.value())
    return len(seen)


def test_kafka_keeps_serving_with_one_broker_killed(clusters):
    admin = brokers.kafka_admin()
    topic = config.unique_name("failover")
    admin.create_topics([NewTopic(topic, 3, 3, config={"min.insync.replicas": "2"})])[topic].result(30)
    victim = NODES["kafka-3"]
    try:
        assert produce(topic, [b"before-%d" % i for i in range(20)]) == 20
        brokers.kill("kafka-3")
        assert not brokers.port_open(victim.ports["kafka"])
        # two of three replicas left: acks=all with min.insync.replicas=2 still succeeds
        assert produce(topic, [b"during-%d" % i for i in range(20)]) == 20
        values = consume_all(topic, 40)
        assert sorted(values) == sorted([b"before-%d" % i for i in range(20)] + [b"during-%d" % i for i in range(20)])
    finally:
        brokers.start("kafka-3")
        admin.delete_topics([topic])[topic].result(30)
    assert brokers.kafka_node_up(victim)


def test_rabbitmq_quorum_queue_keeps_serving_with_one_node_killed(clusters):
    queue = config.unique_name("failover")
    connection = pika.BlockingConnection(config.amqp_parameters(1))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    try:
        for i in range(10):
            channel.basic_publish("", queue, b"before-%d" % i, mandatory=True)
        brokers.kill("rabbit-2")
        assert brokers.rabbit_node_info(NODES["rabbit-2"]) is None
        for i in range(10):  # confirmed by the two nodes left: a majority of three
            channel.basic_publish("", queue, b"during-%d" % i, mandatory=True)
        bodies = []
        for _ in range(20):
            method, _, body = channel.basic_get(queue, auto_ack=True)
            assert method is not None, f"only {len(bodies)} of 20 messages came back"
            bodies.append(body)
        assert bodies == [b"before-%d" % i for i in range(10)] + [b"during-%d" % i for i in range(10)]
    finally:
        brokers.start("rabbit-2")
        channel.queue_delete(queue)
        connection.close()
    assert len(brokers.rabbit_running_nodes()) == 3


def test_reset_deletes_only_the_learners_names(clusters):
    admin = brokers.kafka_admin()
    mine, other = config.unique_name("reset"), "not-course-reset-" + config.unique_name("x")
    admin.create_topics([NewTopic(t, 1, 1) for t in (mine, other)])[mine].result(30)
    connection = pika.BlockingConnection(config.amqp_parameters(1))
    channel = connection.channel()
    for q in (mine, other):
        channel.queue_declare(q, durable=True)
    channel.exchange_declare(mine, "fanout", durable=True)
    try:
        brokers.wait_for(lambda: other in admin.list_topics(timeout=5).topics, 30, "the topic to exist")
        deleted = brokers.reset()
        assert mine in deleted["topics"] and mine in deleted["queues"] and mine in deleted["exchanges"]
        assert other not in sum(deleted.values(), [])
        assert not any(not config.owned(n) for n in sum(deleted.values(), []))
        queues = {q["name"] for q in brokers.management_get("/api/queues?columns=name")}
        assert other in queues and mine not in queues
        assert other in admin.list_topics(timeout=5).topics
    finally:
        channel.queue_delete(other)
        connection.close()
        admin.delete_topics([other])[other].result(30)


def test_reset_from_the_command_line_reports_counts(clusters):
    from .conftest import cli
    proc = cli("reset", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [line.split()[2] for line in proc.stdout.splitlines()] == ["topics", "groups", "queues", "exchanges"]


def test_a_rabbit_node_that_dies_while_booting_is_started_once_more(clusters, monkeypatch):
    import os
    import signal
    import time

    backend = brokers.backend()
    node = NODES["rabbit-3"]
    launched = []
    start_rabbit = backend.start_rabbit

    def first_boot_dies(n):  # as rabbit-2 once did, with incompatible_feature_flags
        start_rabbit(n)
        launched.append(n.name)
        if len(launched) == 1:
            time.sleep(2)
            os.killpg(backend.pid(n), signal.SIGKILL)

    backend.stop([node])
    monkeypatch.setattr(backend, "start_rabbit", first_boot_dies)
    try:
        backend.start([node])
    finally:
        monkeypatch.undo()
        brokers.start("rabbit-3")  # a no-op when the retry worked; brings the node back when it did not
    assert launched == ["rabbit-3", "rabbit-3"]
    assert brokers.rabbit_node_info(node) is not None
