"""Checks for lab 01 (Kafka: first producer and consumer). Each check reads what the learner's
code did back from the real brokers: the messages in the topic, the delivery reports a real
produce gives, the consumer group's state and committed offsets.
"""
from __future__ import annotations

import json
import threading
import time

from confluent_kafka import (Consumer, ConsumerGroupTopicPartitions, KafkaError, KafkaException, Producer,
                             TopicPartition)

from .. import kafka
from ..config import kafka_config, unique_name
from . import check, learner_call

def end_offsets(topic: str) -> dict:
    """{partition: end offset} as the brokers report it ({} when the topic does not exist)."""
    return {p: high for p, (_low, high) in kafka.watermarks(topic).items()}


def read_at(topic: str, partition: int, offset: int, timeout: float = 10.0):
    """The message stored at one partition and offset (None if there is none)."""
    c = Consumer(kafka_config(group_id=unique_name("lab01-read"), enable_auto_commit=False))
    try:
        c.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is not None and msg.error() is None:
                return msg if msg.offset() == offset else None
    finally:
        c.close()
    return None


def _close_and_delete(producer: Producer, *topics: str) -> None:
    """Close the check's producer, then delete its topics. In this order: the brokers auto-create
    topics, and a live producer that still knows a deleted topic would create it again."""
    producer.purge()   # drop what a broken answer left undelivered, so close() does not wait for it
    producer.close()
    for t in topics:
        kafka.delete_topic(t)


def _group(group_id: str):
    admin = kafka.admin()
    desc = admin.describe_consumer_groups([group_id])[group_id].result(10)
    offsets = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group_id)])[group_id].result(10)
    committed = {tp.partition: tp.offset for tp in offsets.topic_partitions if tp.offset >= 0}
    return desc.state.name, len(desc.members), committed


# --- exercise 1 -----------------------------------------------------------------------------

@check(1, "produce 10 JSON orders keyed by customer, with the header source=lab")
def ex1(fb, producer, topic, orders):
    waiting = len(producer)
    if not fb.expect(waiting == 0, f"the producer still has {waiting} message(s) or delivery report(s) waiting: "
                                   "call producer.flush() at the end of produce_orders(), so that every message "
                                   "is delivered (and reported) before the function returns"):
        return
    total = sum(end_offsets(topic).values())
    if total == 0:
        fb.problems.append(f"topic `{topic}` holds no messages: produce_orders() should call producer.produce() "
                           "once per order")
        return
    if not fb.expect(total == len(orders), f"topic `{topic}` holds {total} messages; expected exactly "
                                           f"{len(orders)}, one per order (run the cell once: it creates a fresh topic)"):
        return
    got = kafka.consume(topic, total, timeout=20)
    if not fb.expect(len(got) == total, f"could read back only {len(got)} of {total} messages from `{topic}`"):
        return
    by_id, bad_json, bad_keys, bad_headers = {}, [], [], []
    for msg in got:
        try:
            value = json.loads(msg.value())
        except (TypeError, ValueError):
            bad_json.append(msg.value()[:40])
            continue
        if not isinstance(value, dict) or "order_id" not in value:
            bad_json.append(msg.value()[:40])
            continue
        by_id[value["order_id"]] = value
        key = msg.key().decode() if msg.key() is not None else None
        if key != value.get("customer"):
            bad_keys.append((value["order_id"], key))
        headers = dict(msg.headers() or [])
        if headers.get("source") != b"lab":
            bad_headers.append(value["order_id"])
    fb.expect(not bad_json, f"{len(bad_json)} value(s) are not the JSON of an order, e.g. {bad_json[:1]}: "
                            "use value=json.dumps(order) (str(order) is Python syntax, not JSON)")
    fb.expect(not bad_keys, f"the key of order {bad_keys[:1]} is not its customer: use key=order['customer'] "
                            "so that one customer's orders share a partition")
    fb.expect(not bad_headers, f"{len(bad_headers)} message(s) lack the header source=lab: pass "
                               "headers={'source': 'lab'} to produce()")
    wanted = {o["order_id"]: o for o in orders}
    fb.expect(bool(bad_json) or by_id == wanted,
              "the JSON values read back do not equal the orders: produce each order dict unchanged")
    per_customer = {}
    for msg in got:
        if msg.key() is not None:
            per_customer.setdefault(msg.key(), set()).add(msg.partition())
    return (f"{total} orders in `{topic}`, valid JSON, keyed by customer ({len(per_customer)} customers, each on "
            "one partition), each with the header source=lab, all delivered before the check")


# --- exercise 2 -----------------------------------------------------------------------------

@check(2, "record delivery successes and failures in a callback")
def ex2(fb, on_delivery, failures, successes):
    if not fb.expect(isinstance(failures, list) and isinstance(successes, list),
                     "`failures` and `successes` must stay the two lists the cell creates"):
        return
    if not callable(on_delivery):
        fb.problems.append("`on_delivery` is not a function: define def on_delivery(err, msg)")
        return
    topic = kafka.create_topic("lab01-small", partitions=1, config={"max.message.bytes": "1024"})
    producer = Producer(kafka_config())
    try:
        f0, s0 = len(failures), len(successes)
        # three small, one over the topic's 1024-byte limit, two small; flushed apart so that only
        # the large message's own batch is rejected
        batches = [[b"small-%d" % i for i in range(3)], [b"L" * 4000], [b"small-%d" % i for i in range(3, 5)]]

        def drive():
            for batch in batches:
                for value in batch:
                    producer.produce(topic, value=value, on_delivery=on_delivery)
                producer.flush(15)

        ok, _ = learner_call(fb, "producing with your on_delivery", drive)
        if not ok:
            return
        new_f, new_s = failures[f0:], successes[s0:]
        fb.expect(len(new_f) == 1, f"a real produce of 5 small messages and 1 oversize message added "
                                   f"{len(new_f)} item(s) to `failures`; expected exactly 1 (append err when "
                                   "err is not None)")
        fb.expect(len(new_s) == 5, f"it added {len(new_s)} item(s) to `successes`; expected 5 (append "
                                   "(msg.partition(), msg.offset()) when err is None)")
        if len(new_f) == 1:
            err = new_f[0]
            fb.expect(isinstance(err, KafkaError) and err.code() == KafkaError.MSG_SIZE_TOO_LARGE,
                      f"the failure recorded is {err!r}; expected the KafkaError itself (err), whose name is "
                      "MSG_SIZE_TOO_LARGE")
        if len(new_s) == 5:
            shapes_ok = all(isinstance(s, tuple) and len(s) == 2 and all(isinstance(x, int) for x in s)
                            for s in new_s)
            if fb.expect(shapes_ok, f"the successes are {new_s[:2]}...; expected (partition, offset) tuples "
                                    "of ints: (msg.partition(), msg.offset())"):
                stored = end_offsets(topic)
                fb.expect(sorted(new_s) == [(0, o) for o in range(stored.get(0, 0))],
                          f"the successes {sorted(new_s)} do not match what the broker stored: offsets 0 to "
                          f"{stored.get(0, 0) - 1} of partition 0")
        return ("a real produce gave 5 successes at the offsets the broker stored and exactly 1 failure, "
                "MSG_SIZE_TOO_LARGE, which only the callback could see")
    finally:
        _close_and_delete(producer, topic)


# --- exercise 3 -----------------------------------------------------------------------------

def _fill(topic: str, n: int) -> list:
    producer = Producer(kafka_config())
    values = [f"m{i}" for i in range(n)]
    for v in values:
        producer.produce(topic, value=v, partition=0)
    producer.close()   # flushes
    return values


def _call_with_watchdog(fb, what, fn, args, limit):
    """Run the learner's function in a thread; report it if it does not return within ``limit`` s."""
    box = {}

    def run():
        ok, value = learner_call(fb, what, fn, *args)
        box["ok"], box["value"] = ok, value

    t = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    t.start()
    t.join(limit)
    if t.is_alive():
        fb.problems.append(f"{what} did not return within {limit:.0f} s: stop polling at the deadline "
                           "(time.monotonic() + timeout) even when fewer than n messages arrived")
        return False, None, time.monotonic() - started
    return box.get("ok", False), box.get("value"), time.monotonic() - started


@check(3, "read n messages with a deadline, skipping error events, and close the consumer")
def ex3(fb, read_n):
    if not callable(read_n):
        fb.problems.append("`read_n` is not a function: define def read_n(conf, topic, n, timeout)")
        return
    topic = kafka.create_topic("lab01-read", partitions=2)   # all messages in partition 0; partition 1 stays empty
    try:
        values = _fill(topic, 8)
        conf = kafka_config(group_id=unique_name("lab01-read-n"), auto_offset_reset="earliest",
                            enable_partition_eof=True)
        ok, got, _ = _call_with_watchdog(fb, "read_n(conf, topic, 5, 15)", read_n, (dict(conf), topic, 5, 15.0), 30)
        if not ok:
            return
        if got is None:
            fb.problems.append("read_n(conf, topic, 5, 15) returned None; expected the list of the 5 values read")
            return
        got = list(got)
        fb.expect(got == values[:5], f"read_n(conf, topic, 5, 15) returned {got!r}; expected {values[:5]!r} "
                                     "(the first 5 values of partition 0, decoded to str, no error events)")
        state, members, committed = _group(conf["group.id"])
        fb.expect(members == 0, f"after read_n returned, its consumer group is {state} with {members} member(s): "
                                "the consumer was not closed, so the brokers keep it as a member until its "
                                "session times out; call consumer.close() before returning (in a finally:)")
        if members == 0:
            fb.expect(committed.get(0) == 5, f"the group's committed offset on partition 0 is "
                                             f"{committed.get(0, 'none')}; expected 5: stop polling once you "
                                             "have n values, then close() (which commits what you read)")
        if not fb.ok:
            return
        # ask for more than there is: the deadline must end the loop, and end-of-partition events are skipped
        conf2 = dict(conf, **{"group.id": unique_name("lab01-read-n")})
        ok, got, took = _call_with_watchdog(fb, "read_n(conf, topic, 10, 4)", read_n, (conf2, topic, 10, 4.0), 20)
        if not ok:
            return
        got = list(got or [])
        fb.expect(got == values, f"read_n(conf, topic, 10, 4) on a topic holding 8 messages returned "
                                 f"{[g if len(str(g)) < 20 else str(g)[:20] + '...' for g in got]!r}; expected "
                                 f"the 8 values {values!r}: skip events where msg.error() is set (here: "
                                 "end of partition) instead of treating them as messages")
        fb.expect(took < 4 + 6, f"read_n(conf, topic, 10, 4) took {took:.0f} s; it should give up soon after "
                                "its 4 s deadline")
        return ("read_n returned the first 5 values in order, skipped the end-of-partition events, stopped at "
                "the deadline when asked for more than there was, and closed its consumer (group EMPTY, "
                "offset 5 committed)")
    finally:
        kafka.delete_topic(topic)


# --- exercise 4 -----------------------------------------------------------------------------

@check(4, "fix the article's snippet: a synchronous send that returns (partition, offset)")
def ex4(fb, send_sync):
    if not callable(send_sync):
        fb.problems.append("`send_sync` is not a function: define def send_sync(producer, topic, key, value, timeout=10.0)")
        return
    topic = kafka.create_topic("lab01-sync", partitions=3)
    small = kafka.create_topic("lab01-sync-small", partitions=1, config={"max.message.bytes": "1024"})
    producer = Producer(kafka_config(client_id="analytics_producer"))
    try:
        value = '{"action": "login", "ts": "2023-10-18"}'
        results = []
        for key in ("user_123", "user_123", "user_7"):
            ok, result = learner_call(fb, f"send_sync(producer, topic, {key!r}, ...)", send_sync,
                                      producer, topic, key, value)
            if not ok:
                if fb.problems and "has no attribute 'get'" in fb.problems[-1]:
                    fb.problems.append("produce() returns None in confluent-kafka: there is no future to "
                                       "call .get() on; wait for the delivery callback with flush()")
                return
            if not (isinstance(result, tuple) and len(result) == 2 and all(isinstance(x, int) for x in result)):
                fb.problems.append(f"send_sync returned {result!r}; expected a tuple (partition, offset) of ints "
                                   "taken from the delivered message in the callback, after producer.flush()")
                return
            results.append(result)
        for (partition, offset), key in zip(results, ("user_123", "user_123", "user_7")):
            msg = read_at(topic, partition, offset) if offset >= 0 else None
            fb.expect(msg is not None and msg.key() == key.encode() and msg.value() == value.encode(),
                      f"send_sync returned ({partition}, {offset}) for key {key!r}, but the broker holds no such "
                      "message there; return msg.partition() and msg.offset() from the delivery report")
        (p1, o1), (p2, o2) = results[0], results[1]
        fb.expect(p1 == p2 and o2 == o1 + 1, f"two sends with the same key returned {results[0]} and {results[1]}; "
                                             "expected the same partition and consecutive offsets")
        if not fb.ok:
            return
        raised = None
        try:
            send_sync(producer, small, "user_123", "x" * 4000)
        except KafkaException as e:
            raised = e
        except Exception as e:  # the learner's code may raise anything
            fb.problems.append(f"for an oversize message send_sync raised {type(e).__name__}: {e}; expected "
                               "KafkaException(err) with the delivery report's error")
            return
        if raised is None:
            fb.problems.append("send_sync returned normally for a message the broker rejected (too large for the "
                               "topic); when the callback's err is not None, raise KafkaException(err)")
            return
        err = raised.args[0] if raised.args else None
        fb.expect(isinstance(err, KafkaError) and err.code() == KafkaError.MSG_SIZE_TOO_LARGE,
                  f"send_sync raised {raised!r}; expected KafkaException(err) carrying MSG_SIZE_TOO_LARGE")
        fb.expect(len(producer) == 0, "the producer still holds undelivered messages after send_sync returned: "
                                      "flush() before reading the outcome")
        return ("send_sync returned the real (partition, offset) of each message (checked on the broker), "
                "consecutive offsets for one key, and raised KafkaException(MSG_SIZE_TOO_LARGE) for a rejected one")
    finally:
        _close_and_delete(producer, topic, small)
