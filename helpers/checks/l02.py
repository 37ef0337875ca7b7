"""Checks for lab 02, RabbitMQ: first publisher and consumer.

Each check makes its own uniquely named queue, fills it, runs the learner's function on a
channel of a **separate connection**, then closes that connection and reads back, with its own
consumer, what is left in the queue. A message the learner received but never acknowledged
comes back at that moment (with ``redelivered=True``); a message consumed with ``auto_ack=True``
and not returned is gone. So the verdict rests on what the broker did, not only on what the
function returned. The learner's channel is wrapped in :class:`Watched`, which passes every
call through and notes ``auto_ack=True`` and the order of acknowledgements, so the feedback can
say *why*. Every check deletes what it created, so it can run again and again.
"""
from __future__ import annotations

import inspect
import json
import time

import pika
import requests

from .. import brokers, rabbit
from . import check, learner_call

PERSISTENT = pika.DeliveryMode.Persistent.value  # 2


# --- plumbing -----------------------------------------------------------------------------------

class _Sandbox(rabbit.Sandbox):
    """The check's own connection and queues, deleted afterwards."""

    def queue(self, stem: str, *bodies, **declare) -> str:
        """A durable classic queue holding ``bodies`` (persistent, confirmed), in that order."""
        name = self.name(stem)
        channel = self.channel()
        channel.queue_declare(name, durable=True, **declare)
        for body in bodies:
            channel.basic_publish("", name, body.encode(), pika.BasicProperties(delivery_mode=PERSISTENT))
        channel.close()
        return name


class Watched:
    """The learner's channel, passed through unchanged, with a log of the calls that decide delivery.

    ``auto_ack`` lists the calls made with ``auto_ack=True``; ``deliveries`` maps each delivery tag
    the learner received to its body; ``events`` is the ordered log of ``("handled", body)`` (from the
    check's ``handle``) and ``("ack", tag, multiple)``; ``rejects`` lists ``(tag, requeue)``.
    A callback registered with ``basic_consume`` receives this wrapper as its ``ch``, so acks made
    inside the callback are seen too.
    """

    def __init__(self, channel):
        self._channel = channel
        self.auto_ack, self.deliveries, self.events, self.rejects = [], {}, [], []

    def __getattr__(self, name):
        return getattr(self._channel, name)

    def _note_auto_ack(self, method: str, args, kwargs):
        bound = inspect.signature(getattr(self._channel, method)).bind(*args, **kwargs)
        if bound.arguments.get("auto_ack"):
            self.auto_ack.append(method)

    def _saw(self, method, body):
        if method is not None:
            self.deliveries[method.delivery_tag] = body

    def basic_get(self, *args, **kwargs):
        self._note_auto_ack("basic_get", args, kwargs)
        method, properties, body = self._channel.basic_get(*args, **kwargs)
        self._saw(method, body)
        return method, properties, body

    def consume(self, *args, **kwargs):
        self._note_auto_ack("consume", args, kwargs)
        for method, properties, body in self._channel.consume(*args, **kwargs):
            self._saw(method, body)
            yield method, properties, body

    def basic_consume(self, *args, **kwargs):
        self._note_auto_ack("basic_consume", args, kwargs)
        bound = inspect.signature(self._channel.basic_consume).bind(*args, **kwargs)
        callback = bound.arguments["on_message_callback"]

        def watched(ch, method, properties, body):
            self._saw(method, body)
            callback(self, method, properties, body)

        bound.arguments["on_message_callback"] = watched
        return self._channel.basic_consume(*bound.args, **bound.kwargs)

    def basic_ack(self, delivery_tag=0, multiple=False):
        self.events.append(("ack", delivery_tag, multiple))
        return self._channel.basic_ack(delivery_tag, multiple)

    def basic_reject(self, delivery_tag, requeue=True):
        self.rejects.append((delivery_tag, requeue))
        return self._channel.basic_reject(delivery_tag, requeue)

    def basic_nack(self, delivery_tag=0, multiple=False, requeue=True):
        self.rejects.append((delivery_tag, requeue))
        return self._channel.basic_nack(delivery_tag, multiple, requeue)

    def acked_before_handled(self) -> list:
        """Bodies that were acknowledged before the check's ``handle`` had been called with them."""
        handled, early = set(), []
        for event in self.events:
            if event[0] == "handled":
                handled.add(event[1])
            else:
                _, tag, multiple = event
                tags = [t for t in self.deliveries if t <= tag] if multiple or tag == 0 else [tag]
                early += [self.deliveries[t] for t in tags if t in self.deliveries and self.deliveries[t] not in handled]
        return early


def _drain(channel, queue: str, idle: float = 1.0) -> list:
    """Take every message left in ``queue`` (acknowledging it): ``[(body text, redelivered), ...]``.

    Stops after ``idle`` seconds without a delivery, which also gives the broker the time to put
    back what a just-closed connection held unacknowledged."""
    out = []
    for method, _, body in channel.consume(queue, inactivity_timeout=idle):
        if method is None:
            break
        out.append((body.decode(errors="replace"), method.redelivered))
        channel.basic_ack(method.delivery_tag)
    channel.cancel()
    return out


def _text(body) -> str:
    return body.decode(errors="replace") if isinstance(body, (bytes, bytearray)) else str(body)


def _close(connection):
    try:
        if connection.is_open:
            connection.close()
    except pika.exceptions.AMQPError:
        pass


def _queue_info(name: str):
    """The management API's view of a queue, or None when it does not exist."""
    try:
        return brokers.management_get(f"/api/queues/%2F/{name}")
    except requests.HTTPError as e:
        if e.response is not None and e.response.status_code == 404:
            return None
        raise


def _names(bodies) -> str:
    return ", ".join(bodies) if bodies else "none"


def _auto_ack_problem(fb, watched):
    fb.expect(not watched.auto_ack, f"you called {', '.join(sorted(set(watched.auto_ack)))} with auto_ack=True: "
              "the broker then forgets each message the moment it sends it, before your code has processed it; "
              "use auto_ack=False and channel.basic_ack(method.delivery_tag) after processing")


# --- exercise 1 -------------------------------------------------------------------------------------

EX1_COUNT = 5


@check(1, "a durable quorum queue holding 5 persistent JSON messages")
def ex1(fb, declare_and_publish):
    if fb.unset("declare_and_publish", declare_and_publish):
        return
    with _Sandbox() as box:
        queue = box.name("lab02-orders")
        channel = box.channel()
        ok, _ = learner_call(fb, "your declare_and_publish()", declare_and_publish, channel, queue)
        if not ok:
            if any("non-durable" in p for p in fb.problems):
                fb.expect(False, "quorum queues are always durable: declare with durable=True")
            return
        info = _queue_info(queue)
        deadline = time.monotonic() + 2
        while info is None and time.monotonic() < deadline:  # RabbitMQ 4.2 (Khepri): the API may lag a declare
            time.sleep(0.1)
            info = _queue_info(queue)
        if not fb.expect(info is not None, "after declare_and_publish(channel, queue) there is no queue named "
                         "`queue` on the broker; declare it with channel.queue_declare(queue, durable=True, "
                         "arguments={'x-queue-type': 'quorum'})"):
            return
        fb.expect(info.get("type") == "quorum", f"the queue is a {info.get('type')} queue (arguments on the broker: "
                  f"{info.get('arguments') or {}}); declare it with arguments={{'x-queue-type': 'quorum'}}")
        fb.expect(info.get("durable") is True, "the queue is not durable; declare it with durable=True")

        reader = box.channel(confirms=False)
        deadline, depth = time.monotonic() + 3, 0
        while time.monotonic() < deadline:  # a quorum queue commits a publish through Raft, a moment later
            depth = reader.queue_declare(queue, passive=True).method.message_count
            if depth >= EX1_COUNT:
                break
            time.sleep(0.1)
        messages = []
        while True:
            method, properties, body = reader.basic_get(queue, auto_ack=True)
            if method is None:
                break
            messages.append((properties, body))
    fb.expect(len(messages) == EX1_COUNT, f"the queue holds {len(messages)} messages; the exercise asks for "
              f"{EX1_COUNT} (publish with exchange='' and routing_key=queue)")
    if not messages:
        return
    transient = sum(p.delivery_mode != PERSISTENT for p, _ in messages)
    fb.expect(transient == 0, f"{transient} of {len(messages)} messages are not marked persistent "
              "(delivery_mode is not 2); pass properties=pika.BasicProperties(delivery_mode="
              "pika.DeliveryMode.Persistent, ...)")
    types = sorted({str(p.content_type) for p, _ in messages if p.content_type != "application/json"})
    fb.expect(not types, f"some messages have content_type {', '.join(types)}; "
              "the exercise asks for content_type='application/json'")
    not_json = 0
    for _, body in messages:
        try:
            json.loads(body)
        except ValueError:
            not_json += 1
    fb.expect(not_json == 0, f"{not_json} message bodies are not valid JSON (use json.dumps(...).encode())")
    return (f"the broker holds a durable quorum queue (replicated on {len(info.get('members') or [])} nodes) "
            f"with {EX1_COUNT} persistent application/json messages")


# --- exercise 2 -------------------------------------------------------------------------------------

EX2_TOTAL, EX2_N = 8, 5


@check(2, "consume exactly n messages with manual acknowledgements")
def ex2(fb, consume_and_ack):
    if fb.unset("consume_and_ack", consume_and_ack):
        return
    bodies = [f"order-{i}" for i in range(EX2_TOTAL)]
    with _Sandbox() as box:
        queue = box.queue("lab02-consume", *bodies)
        learner = rabbit.connect()
        watched = Watched(learner.channel())
        try:
            ok, result = learner_call(fb, "your consume_and_ack()", consume_and_ack, watched, queue, EX2_N)
        finally:
            _close(learner)  # whatever it received and did not acknowledge goes back to the queue now
        left = _drain(box.channel(confirms=False), queue)
    if not ok:
        return
    _auto_ack_problem(fb, watched)
    if not fb.expect(isinstance(result, (list, tuple)), f"consume_and_ack() returned {type(result).__name__}; "
                     "return the list of the bodies it processed"):
        return
    got = [_text(b) for b in result]
    fb.expect(got == bodies[:EX2_N], f"consume_and_ack(channel, queue, {EX2_N}) returned {got}; expected the "
              f"first {EX2_N} bodies in order: {bodies[:EX2_N]}")
    left_bodies = [b for b, _ in left]
    back = [b for b in bodies[:EX2_N] if b in left_bodies]
    lost = [b for b in bodies[EX2_N:] if b not in left_bodies]
    acks = [e for e in watched.events if e[0] == "ack"]
    hint = ""
    if back and len(acks) == 1 and not acks[0][2]:
        hint = (" (you acknowledged one delivery tag without multiple=True, which acknowledges that one message "
                "only; ack each message, or pass multiple=True)")
    fb.expect(not back, f"{len(back)} of the {EX2_N} messages you processed came back to the queue when your "
              f"connection closed ({_names(back)}): they were delivered but never acknowledged{hint}")
    fb.expect(not lost, f"{len(lost)} messages you did not process are gone from the queue ({_names(lost)}): "
              "a consumer with auto_ack=True loses every message the broker pushed to it")
    return (f"returned the {EX2_N} bodies in order, each acknowledged: the other {EX2_TOTAL - EX2_N} messages "
            "are still in the queue and nothing came back")


# --- exercise 3 -------------------------------------------------------------------------------------

EX3_ORDERS = [f"Order: #{12345 + i}" for i in range(6)]


@check(3, "the article's consumer, fixed: every order processed, then acknowledged")
def ex3(fb, run_consumer):
    if fb.unset("run_consumer", run_consumer):
        return
    with _Sandbox() as box:
        queue = box.queue("lab02-article", *EX3_ORDERS)
        learner = rabbit.connect()
        watched = Watched(learner.channel())
        handled = []

        def handle(body):
            handled.append(_text(body))
            watched.events.append(("handled", body))

        try:
            started = time.monotonic()
            ok, _ = learner_call(fb, "your run_consumer()", run_consumer, watched, queue, handle)
            took = time.monotonic() - started
        finally:
            _close(learner)
        left = _drain(box.channel(confirms=False), queue)
    if not ok:
        return
    _auto_ack_problem(fb, watched)
    if not handled:
        fb.expect(False, f"handle() was called for 0 of the {len(EX3_ORDERS)} orders: basic_consume only registers "
                  "the callback; nothing runs it until you drive the connection, e.g. with "
                  "channel.connection.process_data_events(time_limit=1) in a loop")
    else:
        fb.expect(handled == EX3_ORDERS, f"handle() received {handled}; expected each order once, in order: "
                  f"{EX3_ORDERS}")
    early = watched.acked_before_handled()
    fb.expect(not early, f"{len(early)} messages were acknowledged before handle() processed them: if the "
              "process dies between the ack and the work, the order is lost; call handle(body) first, then ack")
    back = [b for b, redelivered in left if redelivered]
    never = [b for b, redelivered in left if not redelivered]
    fb.expect(not back, f"{len(back)} orders came back to the queue when your connection closed: they were "
              "delivered but not acknowledged; call ch.basic_ack(delivery_tag=method.delivery_tag) in the "
              "callback, after handle(body)")
    if handled:
        fb.expect(not never, f"{len(never)} orders were never delivered to your consumer; keep driving the "
                  "connection until a full second passes with no new message")
    fb.expect(took < 15, f"run_consumer() took {took:.0f} s; stop once no message has arrived for about 1 s")
    return (f"all {len(EX3_ORDERS)} orders were processed, then acknowledged; the queue is empty and nothing "
            "came back when the connection closed")


# --- exercise 4 -------------------------------------------------------------------------------------

@check(4, "basic_get, reject with requeue=True, then with requeue=False")
def ex4(fb, get_and_reject):
    if fb.unset("get_and_reject", get_and_reject):
        return
    with _Sandbox() as box:
        queue = box.queue("lab02-reject", "first", "second")
        learner = rabbit.connect()
        watched = Watched(learner.channel())
        try:
            ok, result = learner_call(fb, "your get_and_reject()", get_and_reject, watched, queue)
        finally:
            _close(learner)
        left = _drain(box.channel(confirms=False), queue)
    if not ok:
        if watched.auto_ack:
            _auto_ack_problem(fb, watched)
        return
    _auto_ack_problem(fb, watched)
    want = [("first", False), ("first", True)]
    try:
        got = [(_text(b), bool(r)) for b, r in result]
    except (TypeError, ValueError):
        fb.expect(False, f"get_and_reject() returned {result!r}; return a list of two (body, redelivered) pairs")
        return
    fb.expect(got == want, f"get_and_reject() returned {got}; expected {want}: a message put back with "
              "requeue=True returns to the head of this (classic) queue, and the next get sees it again with "
              "redelivered=True")
    fb.expect(left == [("second", False)], f"after your function the queue held {left} (body, redelivered); "
              "expected only ('second', False): the first message, rejected with requeue=False the second "
              "time, must be gone, and 'second' must never have been delivered")
    return ("first get: ('first', redelivered=False), requeued; second get: the same message, redelivered=True, "
            "then dropped; only 'second' is left, never delivered")
