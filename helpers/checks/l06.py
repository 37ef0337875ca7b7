"""Checks for lab 06, RabbitMQ reliability.

Each check builds its own uniquely named queues and exchanges, runs the learner's code against
the real cluster (a consumer driven by the learner's handler, a queue the learner declared, a
publisher that settles confirms with the learner's function, a retry topology the learner
declared), reads the outcome back from the broker (queue depths, dead letters and their
``x-death`` reasons, queue arguments from the management API), and deletes everything it created.
Every loop that the learner's code could make endless (a requeued poison message, a retry that
never stops) is bounded in time and in deliveries.
"""
from __future__ import annotations

import json
import time
from collections import Counter

import pika
import requests

from .. import brokers, config, rabbit
from . import check, learner_call

# --- plumbing -------------------------------------------------------------------------------


class _Sandbox(rabbit.Sandbox):
    """The check's own connection, quorum queues and exchanges, deleted afterwards."""

    def queue(self, channel, stem: str, **arguments) -> str:
        name = self.name(stem)
        channel.queue_declare(name, durable=True, arguments={"x-queue-type": "quorum", **arguments})
        return name

    def exchange(self, channel, stem: str, kind: str = "fanout") -> str:
        name = self.name(stem, "exchange")
        channel.exchange_declare(name, kind, durable=True)
        return name

    def pump(self, seconds: float, until=None):
        """Let the connection deliver for ``seconds`` (or until ``until()`` is true)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.connection.process_data_events(time_limit=min(0.05, max(0.0, deadline - time.monotonic())))
            if until is not None and until():
                return True
        return False


def _queue_info(name: str):
    """The management API's view of a queue, or None when it does not exist."""
    deadline = time.monotonic() + 2.0      # on RabbitMQ 4.x (Khepri) the API may lag a declare by a few ms
    while True:
        try:
            return brokers.management_get(f"/api/queues/%2F/{name}")
        except requests.HTTPError as e:
            if e.response is None or e.response.status_code != 404:
                raise
            if time.monotonic() > deadline:
                return None
        time.sleep(0.1)


def _take_all(channel, queue):
    """Every ready message of ``queue`` as (body, properties), acked."""
    out = []
    while True:
        method, properties, body = channel.basic_get(queue)
        if method is None:
            return out
        channel.basic_ack(method.delivery_tag)
        out.append((body, properties))


def _death_reason(properties):
    deaths = (properties.headers or {}).get("x-death") or [{}]
    return deaths[0].get("reason")


def _short(body: bytes, n: int = 40) -> str:
    text = body.decode(errors="replace")
    return repr(text if len(text) <= n else text[:n] + "...")


# --- exercise 1: ack the good, dead-letter the poison -----------------------------------------

EX1_GOOD = [{"order_id": i, "qty": q} for i, q in ((1, 2), (2, 1), (3, 5), (4, 1), (5, 3), (6, 7), (7, 2), (8, 4))]
EX1_POISON = [b"not json at all", b'{"order_id": 9, "qty": 0}', b'{"order_id": 10, "qty": "three"}',
              b'{"order_id": 11}', b"[1, 2, 3]"]
EX1_LIMIT = 3       # the check's queue dead-letters a message returned more than 3 times: bounds a requeue loop


def _ex1_messages():
    """Good and poison bodies, interleaved in a fixed order."""
    good, poison = iter(json.dumps(o).encode() for o in EX1_GOOD), iter(EX1_POISON)
    return [next(good) if kind == "g" else next(poison) for kind in "ggpggpggpgpgp"]


@check(1, "ack good orders once, reject poison ones without requeue so they dead-letter")
def ex1(fb, handle, processed):
    if not callable(handle):
        fb.problems.append("`handle` is not a function: define def handle(channel, method, properties, body)")
        return
    if not isinstance(processed, list):
        fb.problems.append("`processed` must stay the list the cell creates (process() appends to it)")
        return
    before = len(processed)
    with _Sandbox() as box:
        channel = box.channel()
        dlx = box.exchange(channel, "lab06-dlx")
        dlq = box.queue(channel, "lab06-dlq")
        channel.queue_bind(dlq, dlx)
        work = box.queue(channel, "lab06-orders", **{"x-dead-letter-exchange": dlx, "x-delivery-limit": EX1_LIMIT})
        for body in _ex1_messages():
            channel.basic_publish("", work, body)

        consumer = box.channel(confirms=False)
        consumer.basic_qos(prefetch_count=20)
        deliveries, errors = [], []

        def on_message(ch, method, properties, body):
            deliveries.append((body, method.redelivered))
            try:
                handle(ch, method, properties, body)
            except Exception as e:  # the learner's handler may raise anything
                errors.append((body, f"{type(e).__name__}: {e}"))

        consumer.basic_consume(work, on_message)
        want_processed, want_dead = len(EX1_GOOD), len(EX1_POISON)
        done = box.pump(4.0, until=lambda: len(processed) - before >= want_processed
                        and (rabbit.queue_depth(channel, dlq) or 0) >= want_dead)
        if done:
            box.pump(0.3)                   # anything that still arrives now is a duplicate
        if consumer.is_open:
            consumer.close()                # unsettled deliveries go back to the queue
        left = _wait_depth(channel, work)
        dead = _take_all(channel, dlq)

    new = processed[before:]
    if errors:
        body, err = errors[0]
        fb.problems.append(f"your handle() raised {err} on the message {_short(body)} ({len(errors)} message(s) "
                           "raised in all); parse inside try/except and reject what you cannot parse")
    if not deliveries:
        fb.problems.append("the check's consumer received no message at all")
        return
    counts = Counter(new)
    good_ids = [o["order_id"] for o in EX1_GOOD]
    missing = [i for i in good_ids if counts[i] == 0]
    twice = sorted(i for i in good_ids if counts[i] > 1)
    wrong = sorted(set(counts) - set(good_ids), key=str)
    fb.expect(not missing, f"the good orders {missing} were never passed to process(); call process(order) with "
                           "the parsed dict, then basic_ack")
    fb.expect(not twice, f"the good orders {twice} were processed more than once: ack each one exactly once, "
                         "after processing it")
    fb.expect(not wrong, f"process() was called for poison messages (order ids {wrong}); check that qty is an "
                         "int greater than 0 before processing")
    redelivered = [b for b, again in deliveries if again]
    dead_bodies = [b for b, _ in dead]
    reasons = Counter(_death_reason(p) for _, p in dead)
    if reasons.get("delivery_limit"):
        fb.problems.append(f"{len(redelivered)} deliveries were repeats, and {reasons['delivery_limit']} message(s) "
                           f"reached the dead-letter queue only because the queue's delivery limit ({EX1_LIMIT}) "
                           "stopped a requeue loop (x-death reason 'delivery_limit'): reject poison with "
                           "requeue=False so it dead-letters at once (reason 'rejected')")
    elif redelivered:
        fb.expect(False, f"{len(redelivered)} deliveries were repeats (redelivered=True), e.g. "
                         f"{_short(redelivered[0])}: a message came back to the queue, so something was "
                         "requeued; use requeue=False for poison and basic_ack for good messages")
    missing_dead = [b for b in EX1_POISON if b not in dead_bodies]
    if missing_dead and not reasons.get("delivery_limit"):
        fb.expect(False, f"{len(missing_dead)} of the {len(EX1_POISON)} poison messages are not in the dead-letter "
                         f"queue, e.g. {_short(missing_dead[0])}: reject them with "
                         "channel.basic_reject(method.delivery_tag, requeue=False) (acking them deletes them)")
    good_dead = [b for b in dead_bodies if b not in EX1_POISON]
    fb.expect(not good_dead, f"good orders ended in the dead-letter queue, e.g. {_short(good_dead[0]) if good_dead else ''}")
    fb.expect(left == 0, f"{left} message(s) were neither acked nor rejected: when the check's consumer closed, they "
                         "went back to the queue; settle every delivery (basic_ack or basic_reject)")
    return (f"{len(EX1_GOOD)} good orders processed once and acked, all {len(EX1_POISON)} poison messages "
            "dead-lettered at their first delivery (x-death reason 'rejected'), nothing left unsettled")


def _wait_depth(channel, queue, timeout: float = 2.0) -> int:
    """The queue's ready count once it has stopped changing (returns arrive a moment after a close)."""
    last, stable_since = None, time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = rabbit.queue_depth(channel, queue) or 0
        if now != last:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since > 0.3:
            break
        time.sleep(0.05)
    return last or 0


# --- exercise 2: a quorum work queue with a delivery limit and a DLX -------------------------

EX2_LIMIT = 3


@check(2, "declare a durable quorum queue with x-delivery-limit 3 and a dead-letter exchange")
def ex2(fb, declare_work_queue):
    if not callable(declare_work_queue):
        fb.problems.append("`declare_work_queue` is not a function: define def declare_work_queue(channel, name, dlx)")
        return
    with _Sandbox() as box:
        channel = box.channel()
        dlx = box.exchange(channel, "lab06-dlx")
        dlq = box.queue(channel, "lab06-dlq")
        channel.queue_bind(dlq, dlx)
        work = box.name("lab06-work")
        ok, _ = learner_call(fb, f"declare_work_queue(channel, {work!r}, {dlx!r})", declare_work_queue,
                             box.channel(), work, dlx)
        if not ok:
            if "classic" in fb.problems[-1] and "x-delivery-limit" in fb.problems[-1]:
                fb.problems.append("the broker refuses x-delivery-limit on a classic queue: add "
                                   "'x-queue-type': 'quorum' to the arguments")
            return
        info = _queue_info(work)
        if info is None:
            fb.problems.append(f"declare_work_queue(channel, name, dlx) did not create a queue called `name` "
                               f"(no queue {work!r} on the broker); call channel.queue_declare(name, ...)")
            return
        args = info.get("arguments") or {}
        kind = info.get("type")
        fb.expect(kind == "quorum", f"the queue is a {kind} queue; declare it with arguments "
                                    "{'x-queue-type': 'quorum', ...}: only quorum queues count deliveries "
                                    "and enforce x-delivery-limit")
        fb.expect(info.get("durable") is True, "the queue is not durable: pass durable=True")
        fb.expect(args.get("x-delivery-limit") == EX2_LIMIT,
                  f"its x-delivery-limit argument is {args.get('x-delivery-limit')!r}; expected the integer {EX2_LIMIT}")
        fb.expect(args.get("x-dead-letter-exchange") == dlx,
                  f"its x-dead-letter-exchange argument is {args.get('x-dead-letter-exchange')!r}; expected the "
                  "`dlx` passed in, so that messages past the limit are dead-lettered rather than dropped")

        # behaviour: a poison message rejected with requeue=True, until it stops coming back
        channel.basic_publish("", work, b"poison")
        deliveries = 0
        while deliveries < 8:
            box.pump(2.0, until=lambda: (rabbit.queue_depth(channel, work) or 0) > 0
                     or (rabbit.queue_depth(channel, dlq) or 0) > 0)
            method, _, _ = channel.basic_get(work)
            if method is None:
                break
            deliveries += 1
            channel.basic_reject(method.delivery_tag, requeue=True)
        dead = _take_all(channel, dlq)
    if deliveries >= 8:
        fb.problems.append(f"a poison message rejected with requeue=True was delivered {deliveries} times and was "
                           f"still coming back; with x-delivery-limit {EX2_LIMIT} a quorum queue stops after "
                           f"{EX2_LIMIT + 1} deliveries")
    elif fb.ok:
        fb.expect(deliveries == EX2_LIMIT + 1, f"the poison message was delivered {deliveries} times; expected "
                                               f"{EX2_LIMIT + 1} (the first delivery plus {EX2_LIMIT} returns)")
    if deliveries < 8:
        fb.expect(len(dead) == 1 and _death_reason(dead[0][1]) == "delivery_limit",
                  "after its last delivery the poison message is not in the dead-letter queue with x-death reason "
                  "'delivery_limit'" + ("" if args.get("x-dead-letter-exchange") == dlx else
                                        ": without x-dead-letter-exchange the queue simply drops it"))
    return (f"a durable quorum queue with x-delivery-limit {EX2_LIMIT} and your DLX: a poison message was "
            f"delivered {EX2_LIMIT + 1} times, then dead-lettered with reason 'delivery_limit'")


# --- exercise 3: settle publisher confirms ----------------------------------------------------

def _probe(fb, on_confirm, steps, label):
    """Run ``on_confirm`` on synthetic frames; compare pending/acked/nacked after each step."""
    pending = {1: b"a", 2: b"b", 3: b"c", 4: b"d", 5: b"e"}
    acked, nacked = [], []
    for method, want_acked, want_nacked, want_pending in steps:
        kind = type(method).__name__
        what = f"on_confirm(Basic.{kind}(delivery_tag={method.delivery_tag}, multiple={method.multiple}), ...)"
        ok, _ = learner_call(fb, what, on_confirm, method, pending, acked, nacked)
        if not ok:
            return False
        got = (acked, nacked, sorted(pending))
        want = (want_acked, want_nacked, want_pending)
        if got != want:
            fb.problems.append(f"{label}: after {what} acked={acked}, nacked={nacked}, pending tags={sorted(pending)}; "
                               f"expected acked={want_acked}, nacked={want_nacked}, pending tags={want_pending}")
            return False
    return True


class _Publisher:
    """The lesson's asynchronous publisher (SelectConnection), settling confirms with the learner's function."""

    def __init__(self, on_confirm, queue, bodies, window=50, timeout=5.0):
        self.on_confirm, self.queue, self.bodies = on_confirm, queue, iter(bodies)
        self.window, self.timeout = window, timeout
        self.pending, self.acked, self.nacked = {}, [], []
        self.next_tag, self.all_sent, self.error, self.frames, self.multiple = 1, False, None, 0, 0

    def run(self):
        self.connection = pika.SelectConnection(config.amqp_parameters(), on_open_callback=self._on_open,
                                                on_open_error_callback=self._on_error,
                                                on_close_callback=lambda c, r: c.ioloop.stop())
        self.connection.ioloop.call_later(self.timeout, self._stop)
        self.connection.ioloop.start()
        return self

    def _on_open(self, connection):
        connection.channel(on_open_callback=self._on_channel)

    def _on_channel(self, channel):
        self.channel = channel
        channel.confirm_delivery(ack_nack_callback=self._on_frame, callback=lambda _: self._publish())

    def _publish(self):
        while not self.all_sent and len(self.pending) < self.window:
            body = next(self.bodies, None)
            if body is None:
                self.all_sent = True
                break
            self.channel.basic_publish("", self.queue, body)
            self.pending[self.next_tag] = body
            self.next_tag += 1
        if self.all_sent and not self.pending:
            self._stop()

    def _on_frame(self, frame):
        self.frames += 1
        self.multiple += bool(frame.method.multiple)
        try:
            self.on_confirm(frame.method, self.pending, self.acked, self.nacked)
        except Exception as e:  # the learner's function may raise anything
            self.error = e
            self._stop()
            return
        self._publish()

    def _stop(self):
        if self.connection.is_open:
            self.connection.close()

    def _on_error(self, connection, error):
        self.error = error
        connection.ioloop.stop()


EX3_LIMIT, EX3_COUNT = 20, 300


@check(3, "settle publisher confirms: multiple=True, acks and nacks")
def ex3(fb, on_confirm):
    if not callable(on_confirm):
        fb.problems.append("`on_confirm` is not a function: define def on_confirm(method, pending, acked, nacked)")
        return
    Ack, Nack = pika.spec.Basic.Ack, pika.spec.Basic.Nack
    in_order = [(Ack(delivery_tag=3, multiple=True), [b"a", b"b", b"c"], [], [4, 5]),
                (Nack(delivery_tag=5, multiple=False), [b"a", b"b", b"c"], [b"e"], [4]),
                (Ack(delivery_tag=4, multiple=False), [b"a", b"b", b"c", b"d"], [b"e"], [])]
    out_of_order = [(Ack(delivery_tag=2, multiple=False), [b"b"], [], [1, 3, 4, 5]),
                    (Nack(delivery_tag=4, multiple=True), [b"b"], [b"a", b"c", b"d"], [5])]
    if not _probe(fb, on_confirm, in_order, "with pending tags 1-5") or \
            not _probe(fb, on_confirm, out_of_order, "with pending tags 1-5, confirms out of order"):
        return
    with _Sandbox() as box:
        channel = box.channel()
        queue = box.name("lab06-full")
        channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "classic", "x-max-length": EX3_LIMIT,
                                                              "x-overflow": "reject-publish"})
        bodies = [b"m%03d" % i for i in range(EX3_COUNT)]
        publisher = _Publisher(on_confirm, queue, bodies).run()
        stored = [b for b, _ in _take_all(channel, queue)]
    if publisher.error is not None:
        fb.problems.append(f"on_confirm raised {type(publisher.error).__name__}: {publisher.error} during a real publish")
        return
    fb.expect(not publisher.pending, f"after a real publish of {EX3_COUNT} messages, {len(publisher.pending)} are "
                                     "still pending: every confirm must remove the tags it settles from `pending` "
                                     f"(the broker sent {publisher.multiple} confirm(s) with multiple=True)")
    fb.expect(sorted(publisher.acked) == sorted(stored),
              f"you recorded {len(publisher.acked)} acked messages, but the queue holds {len(stored)}: the acked "
              "list must be exactly the messages the broker took")
    fb.expect(sorted(publisher.nacked) == sorted(set(bodies) - set(stored)),
              f"you recorded {len(publisher.nacked)} nacked messages; the broker refused "
              f"{EX3_COUNT - len(stored)} (the queue is full after {EX3_LIMIT})")
    return (f"every confirm settled exactly the right tags: a real publish of {EX3_COUNT} messages to a queue "
            f"limited to {EX3_LIMIT} ended with {len(publisher.acked)} acked (exactly the messages in the queue), "
            f"{len(publisher.nacked)} nacked and none pending")


# --- exercise 4: retry with delay --------------------------------------------------------------

EX4_DELAY, EX4_MAX = 200, 3


@check(4, "retry with delay: a TTL wait queue that dead-letters back to the work queue, and a retry counter")
def ex4(fb, declare_retry, retries):
    if not callable(declare_retry) or not callable(retries):
        fb.problems.append("define both def declare_retry(channel, work, wait, delay_ms) and "
                           "def retries(properties, work)")
        return
    with _Sandbox() as box:
        channel = box.channel()
        work, wait = box.name("lab06-work"), box.name("lab06-wait")
        ok, _ = learner_call(fb, "declare_retry(channel, work, wait, 200)", declare_retry,
                             box.channel(), work, wait, EX4_DELAY)
        if not ok:
            return
        infos = {"work": _queue_info(work), "wait": _queue_info(wait)}
        for label, info in infos.items():
            if info is None:
                fb.problems.append(f"declare_retry did not create the `{label}` queue it was given")
            else:
                fb.expect(info.get("type") == "quorum" and info.get("durable") is True,
                          f"the `{label}` queue is a {'durable' if info.get('durable') else 'transient'} "
                          f"{info.get('type')} queue; declare both as durable quorum queues")
        if not fb.ok:
            return
        wait_args, work_args = infos["wait"].get("arguments") or {}, infos["work"].get("arguments") or {}
        fb.expect(wait_args.get("x-message-ttl") == EX4_DELAY,
                  f"the `wait` queue's x-message-ttl is {wait_args.get('x-message-ttl')!r}; expected delay_ms "
                  f"({EX4_DELAY}), so that a message waits there that long")
        fb.expect("x-message-ttl" not in work_args, "the `work` queue has an x-message-ttl: the delay belongs on "
                                                    "the `wait` queue, or unprocessed work expires")

        log, errors = [], []

        def on_message(ch, method, properties, body):
            try:
                n = retries(properties, work)
                n = int(n) if isinstance(n, int) else n      # pika decodes x-death counts as its own int subclass
            except Exception as e:  # the learner's function may raise anything
                errors.append(f"retries(properties, work) raised {type(e).__name__}: {e}")
                n = None
            log.append((n, time.monotonic()))
            if isinstance(n, int) and n < EX4_MAX and len(log) < 8:
                ch.basic_reject(method.delivery_tag, requeue=False)
            else:
                ch.basic_ack(method.delivery_tag)

        consumer = box.channel(confirms=False)
        consumer.basic_qos(prefetch_count=10)
        consumer.basic_consume(work, on_message)
        channel.basic_publish("", work, b"always fails")
        box.pump(4.0, until=lambda: len(log) >= 8 or (log and isinstance(log[-1][0], int) and log[-1][0] >= EX4_MAX))
        box.pump(0.3)   # a delivery after the last one would mean the message still loops
        stranded = {"work": rabbit.queue_depth(channel, work), "wait": rabbit.queue_depth(channel, wait)}
    seen = [n for n, _ in log]
    want = list(range(EX4_MAX + 1))
    if errors:
        fb.problems.append(errors[0])
    if not fb.ok:
        return
    if len(log) == 1 and seen == [0]:
        where = ("it is still in `wait`" if stranded["wait"] else "it expired in `wait` with nowhere to go, "
                 "so it was dropped")
        fb.problems.append(f"the message was rejected once and never came back ({where}): give `wait` "
                           "x-dead-letter-exchange '' and x-dead-letter-routing-key `work`, "
                           "and give `work` x-dead-letter-exchange '' and x-dead-letter-routing-key `wait`")
        return
    if not log:
        fb.problems.append("the message published to `work` was never delivered to the check's consumer")
        return
    fb.expect(seen == want, f"a message that always fails was delivered {len(log)} times and retries() returned "
                            f"{seen}; expected {want}: the count of the x-death entry whose queue is `work` and whose "
                            "reason is 'rejected' (0 when there is no such entry)")
    gaps = [b - a for (_, a), (_, b) in zip(log, log[1:])]
    if gaps:
        fb.expect(min(gaps) >= EX4_DELAY / 1000 * 0.75,
                  f"the shortest wait between two deliveries was {min(gaps) * 1000:.0f} ms; expected at least "
                  f"{EX4_DELAY} ms (delay_ms)")
    return (f"an always-failing message went work -> wait ({EX4_DELAY} ms) -> work {EX4_MAX} times, "
            f"retries() counted {want}, and the consumer could stop after {EX4_MAX} retries")
