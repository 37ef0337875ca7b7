"""Checks for lab 04, Kafka consumer groups and offsets.

Every check builds its own uniquely named topic and group, creates a known state on the real
brokers (messages, committed offsets, deleted records), runs the learner's answer against it,
reads the result back from the brokers, and deletes what it made.
"""
from __future__ import annotations

import json
import time

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from .. import kafka
from ..config import kafka_config, unique_name
from . import check, learner_call

NO_OFFSET = -1001  # what the broker reports for a partition the group never committed


# --- plumbing shared by the checks ---------------------------------------------------------

def _admin() -> AdminClient:
    return AdminClient(kafka_config())


def _committed(admin, group: str, topic: str, partitions) -> dict:
    """{partition: committed offset} as the group coordinator reports it (NO_OFFSET when none)."""
    request = [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in partitions])]
    result = admin.list_consumer_group_offsets(request)[group].result(10)
    return {tp.partition: tp.offset for tp in result.topic_partitions}


def _cleanup(admin, topic: str | None = None, groups=()) -> None:
    """Delete what a check made; a group or topic that is already gone is fine."""
    for group, future in (admin.delete_consumer_groups(list(groups)).items() if groups else []):
        try:
            future.result(30)
        except KafkaException:
            pass
    if topic:
        kafka.delete_topic(topic)


def _produce(topic: str, messages) -> None:
    """messages: iterable of dicts of Producer.produce keyword arguments."""
    producer = Producer(kafka_config(acks="all"))
    for m in messages:
        producer.produce(topic, **m)
    producer.flush(30)


class _Crash(Exception):
    """Raised by the check's own process() to simulate a crash in the middle of processing."""


class _TimedConsumer:
    """The learner's loop gets this stand-in for a Consumer: it forwards everything, but poll() and
    consume() raise once the check's deadline has passed, so a loop that never ends cannot hang the lab."""

    def __init__(self, consumer, seconds: float):
        self._consumer, self._deadline, self._seconds = consumer, time.monotonic() + seconds, seconds

    def _tick(self):
        if time.monotonic() > self._deadline:
            raise TimeoutError(f"the check stopped your loop after {self._seconds:.0f} s without it returning")

    def poll(self, *args, **kwargs):
        self._tick()
        return self._consumer.poll(*args, **kwargs)

    def consume(self, *args, **kwargs):
        self._tick()
        return self._consumer.consume(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._consumer, name)


def _explain_offsets(topic, committed: dict, expected: dict, crashed=None) -> list:
    """One sentence per partition whose committed offset is not the expected one."""
    out = []
    for p in sorted(expected):
        want, got = expected[p], committed.get(p, NO_OFFSET)
        if got == want:
            continue
        shown = "nothing" if got == NO_OFFSET else str(got)
        if crashed is not None and crashed.partition() == p and got == crashed.offset() + 1:
            out.append(f"partition {p}: the group committed {got}, which covers offset {crashed.offset()}, the message "
                       f"whose process() crashed and was never processed: commit only after process() returns")
        elif want == NO_OFFSET:
            out.append(f"partition {p}: the group committed {shown}, but no message of this partition was processed")
        elif got == want - 1:
            out.append(f"partition {p}: the group committed {got}, but the last processed offset there is {want - 1}, "
                       f"so it should be {want}: a committed offset is the NEXT offset to read (msg.offset() + 1; "
                       f"`consumer.commit(message=msg)` does this for you)")
        else:
            out.append(f"partition {p}: the group committed {shown}; after what was processed it should be {want}")
    return out


def _expected_commits(processed, partitions) -> dict:
    """{partition: last processed offset + 1}, NO_OFFSET where nothing was processed."""
    out = {p: NO_OFFSET for p in partitions}
    for p, offset in processed:
        out[p] = max(out[p], offset + 1)
    return out


# --- exercise 1 -------------------------------------------------------------------------------

def _auto_commit_on(conf: dict) -> bool:
    for key in ("enable.auto.commit", "enable_auto_commit"):
        if key in conf:
            return str(conf[key]).strip().lower() not in ("false", "0", "no")
    return True  # Kafka's default


@check(1, "commit each message only after processing it")
def ex1(fb, consumer_conf, process_and_commit):
    if fb.unset("consumer_conf", consumer_conf):
        return
    if not fb.expect(isinstance(consumer_conf, dict), f"`consumer_conf` should be a dict of consumer settings, not {type(consumer_conf).__name__}"):
        return
    if not fb.expect(not _auto_commit_on(consumer_conf),
                     "`consumer_conf` leaves auto commit on (Kafka's default `enable.auto.commit=true`): the client's timer "
                     "would commit messages that were handed out but not processed yet; set it to False and commit yourself"):
        return
    if not fb.expect(callable(process_and_commit), "`process_and_commit` should be the function you defined"):
        return

    admin, partitions, n1, n2 = _admin(), range(3), 12, 10
    topic, group = kafka.create_topic("lab04-commit", partitions=3), unique_name("lab04-commit")
    consumer = None
    try:
        _produce(topic, ({"key": f"key-{i}", "value": str(i)} for i in range(30)))
        conf = kafka_config(**{k: v for k, v in consumer_conf.items() if k not in ("group.id", "group_id")})
        conf["group.id"] = group
        try:
            consumer = Consumer(conf)
        except (KafkaException, ValueError, TypeError) as e:
            fb.expect(False, f"Consumer(consumer_conf) failed: {e}")
            return
        consumer.subscribe([topic])

        # Part 1: process n1 messages, everything must be committed.
        processed = []
        ok, _ = learner_call(fb, f"process_and_commit(consumer, process, {n1})", process_and_commit,
                             _TimedConsumer(consumer, 30), lambda msg: processed.append((msg.partition(), msg.offset())), n1)
        if not ok:
            return
        if not fb.expect(len(processed) == n1, f"process_and_commit(consumer, process, {n1}) called process() on "
                                               f"{len(processed)} messages; it should process exactly {n1}"):
            return
        if not fb.expect(len(set(processed)) == len(processed), "process() was called twice for the same message"):
            return
        expected = _expected_commits(processed, partitions)
        try:  # an asynchronous commit may need a moment to reach the coordinator
            kafka.wait_until(lambda: _committed(admin, group, topic, partitions) == expected, 5, "the commits")
        except Exception:
            pass
        problems = _explain_offsets(topic, _committed(admin, group, topic, partitions), expected)
        if problems:
            fb.expect(False, f"after processing {n1} messages: " + "; ".join(problems))
            return

        # Part 2: process() crashes on the 3rd message; the crashed one must not be committed.
        calls = {"n": 0, "crashed": None}

        def crashing(msg):
            calls["n"] += 1
            if calls["n"] == 3:
                calls["crashed"] = msg
                raise _Crash("process() crashed (simulated by the check)")
            processed.append((msg.partition(), msg.offset()))

        try:
            process_and_commit(_TimedConsumer(consumer, 30), crashing, n2)
            fb.expect(False, "when process() raised, your function carried on: a crash must stop the loop "
                             "(let the exception propagate) so nothing after it is committed")
            return
        except _Crash:
            pass
        except Exception as e:
            fb.expect(False, f"process_and_commit(...) raised {type(e).__name__}: {e}")
            return
        consumer.close()  # a clean close: with auto commit on, this would commit what was handed out
        consumer = None
        expected = _expected_commits(processed, partitions)
        problems = _explain_offsets(topic, _committed(admin, group, topic, partitions), expected, calls["crashed"])
        if problems:
            fb.expect(False, "after a crash in process(): " + "; ".join(problems))
            return
        total = sum(o for o in expected.values() if o > 0)
        return (f"the group's committed offsets match what was processed on every partition ({total} messages), "
                f"and the message whose processing crashed was not committed: at-least-once")
    finally:
        if consumer is not None:
            consumer.close()
        _cleanup(admin, topic, [group])


# --- exercise 2 -------------------------------------------------------------------------------

@check(2, "consumer lag per partition")
def ex2(fb, lag_per_partition):
    if not fb.expect(callable(lag_per_partition), "`lag_per_partition` should be the function you defined"):
        return
    admin = _admin()
    topic, group = kafka.create_topic("lab04-lag", partitions=3), unique_name("lab04-lag")
    try:
        counts = {0: 10, 1: 20, 2: 8}
        _produce(topic, ({"value": f"p{p}-{i}", "partition": p} for p, n in counts.items() for i in range(n)))
        # Retention has removed the oldest records of partitions 0 and 2 (we do it by hand).
        for f in admin.delete_records([TopicPartition(topic, 0, 3), TopicPartition(topic, 2, 5)]).values():
            f.result(30)
        # The group has processed up to offset 6 on partition 0, everything on partition 1, nothing on 2.
        offsets = [TopicPartition(topic, 0, 6), TopicPartition(topic, 1, 20)]
        admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, offsets)])[group].result(10)

        # The check's own measurement, from the brokers.
        probe = Consumer(kafka_config(group_id=unique_name("lab04-probe")))
        committed = _committed(admin, group, topic, counts)
        want = {}
        for p in counts:
            low, high = probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
            want[p] = high - (committed[p] if committed[p] >= 0 else low)
        probe.close()

        ok, got = learner_call(fb, f"lag_per_partition('{group}', '{topic}')", lag_per_partition, group, topic)
        if not ok:
            return
        if not fb.expect(got is not None, "lag_per_partition() returned None; it should return a dict {partition: lag}"):
            return
        if not fb.expect(isinstance(got, dict), f"lag_per_partition() returned a {type(got).__name__}; it should return a dict {{partition: lag}}"):
            return
        got = {int(k) if str(k).isdigit() else k: v for k, v in got.items()}
        if not fb.expect(sorted(got) == sorted(want), f"the dict has keys {sorted(got, key=str)}; it should have one key per partition: {sorted(want)}"):
            return
        for p in sorted(want):
            if got[p] == want[p]:
                continue
            low = {0: 3, 1: 0, 2: 5}[p]
            high = counts[p]
            if p == 2 and got[p] == high:
                fb.expect(False, f"partition 2: you report {got[p]}, counting from offset 0; the group never committed there "
                                 f"and the records before offset {low} are deleted, so count from the low watermark: {want[p]}")
            elif p != 2 and got[p] == high - low:
                fb.expect(False, f"partition {p}: you report {got[p]} = high watermark - low watermark, which is how many "
                                 f"messages the partition holds, not how many the group has still to process ({want[p]}): "
                                 "use the committed offset")
            elif got[p] == want[p] - 1:
                fb.expect(False, f"partition {p}: you report {got[p]}, one less than {want[p]}: the high watermark is already "
                                 "the offset of the NEXT message, so lag = high - committed with no -1")
            else:
                fb.expect(False, f"partition {p}: you report {got[p]}, the brokers say {want[p]}")
        return f"lag per partition {dict(sorted(want.items()))} matches the brokers, including the partition without a commit"
    finally:
        _cleanup(admin, topic, [group])


# --- exercise 3 -------------------------------------------------------------------------------

@check(3, "replay a topic from a point in time")
def ex3(fb, replay_since):
    if not fb.expect(callable(replay_since), "`replay_since` should be the function you defined"):
        return
    admin = _admin()
    topic = kafka.create_topic("lab04-replay", partitions=3)
    try:
        base = int(time.time() * 1000) - 120_000
        since = base + 6_500
        stamps = {0: [base + i * 1000 for i in range(10)],            # at or after `since`: 7, 8, 9
                  1: [base + i * 1000 + 500 for i in range(10)],      # at or after `since`: 6 ... 9
                  2: [base - 60_000 + i * 1000 for i in range(10)]}   # all before `since`
        _produce(topic, ({"value": f"p{p}-{i}", "partition": p, "timestamp": ts}
                         for p, series in stamps.items() for i, ts in enumerate(series)))
        want = sorted(f"p{p}-{i}" for p, series in stamps.items() for i, ts in enumerate(series) if ts >= since)

        ok, got = learner_call(fb, f"replay_since('{topic}', {since})", replay_since, topic, since)
        if not ok:
            return
        if not fb.expect(got is not None, "replay_since() returned None; it should return a list of message values (str)"):
            return
        if not fb.expect(isinstance(got, (list, tuple)), f"replay_since() returned a {type(got).__name__}; it should return a list"):
            return
        got = [v.decode() if isinstance(v, bytes) else v for v in got]
        extra = sorted(set(got) - set(want))
        missing = sorted(set(want) - set(got))
        if extra:
            older = [v for v in extra if v in {f"p{p}-{i}" for p, s in stamps.items() for i, ts in enumerate(s) if ts < since}]
            fb.expect(False, f"{len(extra)} value(s) written before the timestamp came back, e.g. {extra[:3]}: start each partition "
                             "at the offset offsets_for_times() returns, not at the beginning" if older else
                             f"unexpected values {extra[:3]}")
        if missing:
            fb.expect(False, f"missing {missing}: offsets_for_times() returns the first offset whose timestamp is AT OR AFTER "
                             "the time; start exactly there (not one later) and read to the high watermark")
        if not extra and not missing:
            fb.expect(len(got) == len(want), f"some values came back twice: {sorted(v for v in set(got) if got.count(v) > 1)}")
            for p in stamps:
                mine = [int(v.split("-")[1]) for v in got if v.startswith(f"p{p}-")]
                fb.expect(mine == sorted(mine), f"partition {p}'s values are out of offset order: {mine}")
        return f"replayed the {len(want)} messages stamped at or after the time, and nothing older (partition 2 had none)"
    finally:
        _cleanup(admin, topic)


# --- exercise 4 -------------------------------------------------------------------------------

@check(4, "auto.offset.reset for a new group, and a restarted one")
def ex4(fb, reset, old_group_reads):
    if fb.unset("reset", reset) | fb.unset("old_group_reads", old_group_reads):
        return
    if not fb.expect(isinstance(reset, str), f"`reset` should be a string such as 'earliest', not {type(reset).__name__}"):
        return
    admin = _admin()
    topic = kafka.create_topic("lab04-reset", partitions=1)
    new_group, old_group = unique_name("lab04-new"), unique_name("lab04-old")
    readers = {}
    try:
        _produce(topic, ({"value": f"old-{i}"} for i in range(5)))
        request = [ConsumerGroupTopicPartitions(old_group, [TopicPartition(topic, 0, 2)])]
        admin.alter_consumer_group_offsets(request)[old_group].result(10)

        stats = {}
        for name, group in (("new", new_group), ("old", old_group)):
            conf = kafka_config(group_id=group, enable_auto_commit=False, statistics_interval_ms=100)
            conf["auto.offset.reset"] = reset
            conf["stats_cb"] = lambda s, name=name: stats.__setitem__(name, json.loads(s))
            try:
                readers[name] = Consumer(conf)
            except KafkaException as e:
                fb.expect(False, f"auto.offset.reset={reset!r} is not accepted ({e.args[0].str()}); "
                                 "the values are 'earliest' and 'latest'")
                return
            readers[name].subscribe([topic])

        def fetching(name):
            part = stats.get(name, {}).get("topics", {}).get(topic, {}).get("partitions", {}).get("0", {})
            return part.get("fetch_state") == "active"

        got = {"new": [], "old": []}

        def pump():
            for name, c in readers.items():
                msg = c.poll(0.05)
                if msg is not None and msg.error() is None:
                    got[name].append(msg.value().decode())

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(fetching(n) for n in readers):
            pump()
        _produce(topic, ({"value": f"new-{i}"} for i in range(3)))
        done = lambda: all(got[n] and got[n][-1] == "new-2" for n in readers)
        while time.monotonic() < deadline and not done():
            pump()
        end = time.monotonic() + 0.5          # anything more would be a duplicate; give it half a second to show
        while time.monotonic() < end:
            pump()

        old_seen = [v for v in got["new"] if v.startswith("old-")]
        if old_seen:
            fb.expect(False, f"with auto.offset.reset={reset!r} the new group also read the {len(old_seen)} messages written "
                             f"before it started ({', '.join(old_seen)}); it must only see new ones: start at the end of the log")
        fb.expect(got["new"][-3:] == ["new-0", "new-1", "new-2"],
                  f"the new group did not read the 3 new messages (it read {got['new']})")
        fb.expect(old_group_reads == len(got["old"]),
                  f"you predicted the restarted group reads {old_group_reads} messages; it read {len(got['old'])}: "
                  f"{got['old']}. auto.offset.reset only applies when a group has NO committed offset")
        return (f"the new group read only {got['new']}; the restarted group ignored auto.offset.reset and resumed at its "
                f"committed offset 2, reading {len(got['old'])} messages")
    finally:
        for c in readers.values():
            c.close()
        _cleanup(admin, topic, [new_group, old_group])
