"""Checks for lab 05, RabbitMQ exchanges and routing.

Each check builds its own uniquely named exchanges and queues, applies the learner's answer on
the real broker (bindings as data, or the learner's function run against a fresh channel),
publishes test messages with publisher confirms, reads the queues back with ``basic_get``,
and deletes everything it created, so a check can be run again and again.
"""
from __future__ import annotations

import time

import pika
import requests

from .. import brokers, rabbit, widgets
from . import check, learner_call

# --- exercise 1: topic patterns ---------------------------------------------------------------

EX1_QUEUES = ("billing", "eu", "audit")
#: routing key -> the queues that must receive it (every other queue must not)
EX1_ROUTES = {
    "orders.eu.paid": {"billing", "eu", "audit"},
    "orders.us.paid": {"billing", "audit"},
    "orders.us.express.paid": {"billing", "audit"},
    "orders.paid": {"billing", "audit"},
    "orders.eu.shipped": {"eu", "audit"},
    "orders.eu.express.shipped": {"eu", "audit"},
    "orders.eu": {"eu", "audit"},
    "orders.eu.paid.reversed": {"eu", "audit"},
    "orders": {"audit"},
    "payments.eu.paid": set(),
    "refunds.us.paid": set(),
}

# --- exercise 2: headers exchange -------------------------------------------------------------

#: (message headers, the queues that must receive it)
EX2_MESSAGES = [
    ({"format": "pdf", "type": "report"}, {"reports"}),
    ({"format": "pdf", "type": "invoice"}, set()),
    ({"format": "csv", "type": "report"}, set()),
    ({"format": "pdf", "type": "report", "author": "ada"}, {"reports"}),
    ({"priority": "high"}, {"urgent"}),
    ({"priority": "high", "format": "pdf", "type": "report"}, {"reports", "urgent"}),
    ({"priority": "high", "format": "csv"}, {"urgent"}),
    ({"priority": "low", "format": "pdf"}, set()),
    ({}, set()),
]

# --- exercise 3: alternate exchange -----------------------------------------------------------

EX3_ROUTED = "paid"
EX3_KEYS = ["paid", "refunded", "shipped", "PAID", ""]

# --- exercise 4: exchange-to-exchange ---------------------------------------------------------

EX4_KEYS = {"orders": True, "orders.eu.paid": True, "orders.us.express.shipped": True,
            "payments.eu.paid": False, "ordersx.eu.paid": False, "audit.orders": False}


class _Sandbox(rabbit.Sandbox):
    """The check's own connection, exchanges and queues, deleted afterwards."""

    def exchange(self, channel, stem: str, kind: str, **kwargs) -> str:
        name = self.name(stem, "exchange")
        channel.exchange_declare(name, kind, durable=True, **kwargs)
        return name

    def queue(self, channel, stem: str) -> str:
        name = self.name(stem, "queue")
        channel.queue_declare(name, durable=True)
        return name


def _eventually(fetch, good, timeout: float = 2.0):
    """``fetch()`` until ``good(result)`` or ``timeout`` seconds pass; the last result either way.
    (The management API reads the metadata store, which on RabbitMQ 4.x with Khepri may lag a
    write made over AMQP by a few milliseconds.)"""
    deadline = time.monotonic() + timeout
    while True:
        result = fetch()
        if good(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


def _exchange_info(name: str):
    """The management API's view of an exchange, or None when it does not exist."""
    try:
        return brokers.management_get(f"/api/exchanges/%2F/{name}")
    except requests.HTTPError as e:
        if e.response is not None and e.response.status_code == 404:
            return None
        raise


def _queue_exists(name: str) -> bool:
    try:
        brokers.management_get(f"/api/queues/%2F/{name}")
        return True
    except requests.HTTPError as e:
        if e.response is not None and e.response.status_code == 404:
            return False
        raise


def _bodies(channel, queue: str) -> list:
    return [body.decode() for _, body in widgets.collect(channel, queue)]


def _keys(keys) -> str:
    return ", ".join(f"`{k}`" if k else "`''` (empty key)" for k in keys)


def _headers(h: dict) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in h.items()) + "}" if h else "{} (no headers)"


def _is_args(value) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) for k in value)


# --- the checks ---------------------------------------------------------------------------------

@check(1, "topic patterns for billing, eu and audit")
def ex1(fb, bindings):
    if fb.unset("bindings", bindings):
        return
    if not fb.expect(isinstance(bindings, dict), f"`bindings` is a {type(bindings).__name__}; it must be a dict "
                     "such as {'billing': ['pattern', ...], 'eu': [...], 'audit': [...]}"):
        return
    wrong_names = sorted(set(bindings) ^ set(EX1_QUEUES), key=str)
    if not fb.expect(not wrong_names, f"`bindings` has the keys {sorted(bindings, key=str)}; it needs exactly "
                     f"{list(EX1_QUEUES)} (one entry per queue)"):
        return
    patterns = {}
    for queue, value in bindings.items():
        value = [value] if isinstance(value, str) else value
        if not fb.expect(isinstance(value, (list, tuple)) and value and all(isinstance(p, str) for p in value),
                         f"`bindings['{queue}']` must be a non-empty list of pattern strings, e.g. ['orders.#']"):
            return
        patterns[queue] = list(value)

    with _Sandbox() as box:
        channel = box.channel()
        exchange = box.exchange(channel, "lab05-topic", "topic")
        queues = {q: box.queue(channel, f"lab05-{q}") for q in EX1_QUEUES}
        for q, pats in patterns.items():
            for p in pats:
                channel.queue_bind(queues[q], exchange, routing_key=p)
        for key in EX1_ROUTES:
            channel.basic_publish(exchange, key, key.encode())
        received = {q: _bodies(channel, name) for q, name in queues.items()}

    for q in EX1_QUEUES:
        want = [k for k, qs in EX1_ROUTES.items() if q in qs]
        got = received[q]
        missing = [k for k in want if k not in got]
        extra = [k for k in EX1_ROUTES if k in got and k not in want]
        hint = ""
        if missing and any("*" in p for p in patterns[q]):
            hint = " (`*` matches exactly one word; `#` matches zero or more)"
        fb.expect(not missing, f"queue `{q}` with {patterns[q]} did not receive {_keys(missing)}{hint}")
        fb.expect(not extra, f"queue `{q}` with {patterns[q]} also received {_keys(extra)}, which it must not; "
                  "make the pattern more specific")
    return (f"the broker delivered all {len(EX1_ROUTES)} keys exactly as required: billing {patterns['billing']}, "
            f"eu {patterns['eu']}, audit {patterns['audit']}")


@check(2, "headers bindings: pdf AND report to `reports`, priority=high to `urgent`")
def ex2(fb, pdf_reports, high_priority):
    unset = [fb.unset(n, v) for n, v in (("pdf_reports", pdf_reports), ("high_priority", high_priority))]
    if any(unset):
        return
    for name, value in (("pdf_reports", pdf_reports), ("high_priority", high_priority)):
        if not fb.expect(_is_args(value), f"`{name}` must be a dict of binding arguments, e.g. "
                         "{'x-match': 'all', 'name': 'value'}"):
            return

    with _Sandbox() as box:
        channel = box.channel()
        exchange = box.exchange(channel, "lab05-headers", "headers")
        queues = {"reports": box.queue(channel, "lab05-reports"), "urgent": box.queue(channel, "lab05-urgent")}
        for label, name, args in (("reports", "pdf_reports", pdf_reports), ("urgent", "high_priority", high_priority)):
            try:
                channel.queue_bind(queues[label], exchange, routing_key="", arguments=args)
            except pika.exceptions.ChannelClosedByBroker as e:
                fb.expect(False, f"the broker refused the binding `{name}` = {args}: {e.reply_text}")
                return
        for i, (headers, _) in enumerate(EX2_MESSAGES):
            channel.basic_publish(exchange, "", str(i).encode(), pika.BasicProperties(headers=headers or None))
        received = {label: [int(b) for b in _bodies(channel, q)] for label, q in queues.items()}

    for label, name, args in (("reports", "pdf_reports", pdf_reports), ("urgent", "high_priority", high_priority)):
        got = received[label]
        missing = [EX2_MESSAGES[i][0] for i in range(len(EX2_MESSAGES)) if label in EX2_MESSAGES[i][1] and i not in got]
        extra = [EX2_MESSAGES[i][0] for i in got if label not in EX2_MESSAGES[i][1]]
        mode = args.get("x-match", "all (the default)")
        hint = f" (your binding has x-match {mode})"
        fb.expect(not missing, f"`{label}` (bound with `{name}` = {args}) did not receive "
                  + ", ".join(_headers(h) for h in missing) + hint)
        fb.expect(not extra, f"`{label}` (bound with `{name}` = {args}) also received "
                  + ", ".join(_headers(h) for h in extra) + ", which it must not" + hint)
    return (f"all {len(EX2_MESSAGES)} test messages went where they should: `reports` needs format=pdf AND "
            "type=report, `urgent` takes priority=high whatever else the message carries")


@check(3, "a direct exchange whose unroutable messages land in a catch-all queue")
def ex3(fb, build_orders):
    if fb.unset("build_orders", build_orders):
        return
    with _Sandbox() as box:
        orders = box.name("lab05-orders", "exchange")
        catch_all = box.name("lab05-catch-all", "exchange")
        catch_all_queue = box.name("lab05-catch-all", "queue")
        ok, _ = learner_call(fb, "your build_orders()", build_orders, box.channel(), orders, catch_all, catch_all_queue)
        if not ok:
            return
        info = _eventually(lambda: _exchange_info(orders), lambda i: i is not None)
        if not fb.expect(info is not None, f"after build_orders(), the exchange `orders` ({orders}) does not exist "
                         "on the broker; declare it with channel.exchange_declare(orders, 'direct', durable=True, ...)"):
            return
        fb.expect(info["type"] == "direct", f"`orders` is a {info['type']} exchange; the exercise asks for direct")
        args = info.get("arguments") or {}
        if args.get("alternate-exchange") != catch_all:
            typo = [k for k in args if "alternate" in k and k != "alternate-exchange"]
            why = (f"it has {typo[0]!r}, which RabbitMQ ignores: the argument is spelled 'alternate-exchange'"
                   if typo else f"its arguments on the broker are {args or '{}'}")
            fb.expect(False, "`orders` has no alternate exchange pointing at `catch_all` (" + why + "); declare it "
                      "with arguments={'alternate-exchange': catch_all}")
        ae = _exchange_info(catch_all)
        fb.expect(ae is not None, "the exchange `catch_all` does not exist on the broker")
        if ae is not None and ae["type"] != "fanout":
            fb.expect(False, f"`catch_all` is a {ae['type']} exchange; make it a fanout so that every unroutable "
                      "message reaches the catch-all queue whatever its routing key")
        if not fb.expect(_queue_exists(catch_all_queue), "the queue `catch_all_queue` does not exist on the broker; "
                         "declare it (durable=True) and bind it to `catch_all`"):
            return

        channel = box.channel()
        paid = box.queue(channel, "lab05-paid")
        channel.queue_bind(paid, orders, routing_key=EX3_ROUTED)
        for key in EX3_KEYS:
            channel.basic_publish(orders, key, (key or "<empty>").encode())
        got_paid = _bodies(channel, paid)
        got_catch = _bodies(channel, catch_all_queue)
    unroutable = [k or "<empty>" for k in EX3_KEYS if k != EX3_ROUTED]
    lost = [k for k in unroutable if k not in got_catch]
    fb.expect(got_paid == [EX3_ROUTED], f"the queue bound with key 'paid' received {got_paid}; it should get "
              "exactly the one 'paid' message (only unroutable messages go to the alternate exchange)")
    fb.expect(not lost, f"{len(lost)} of {len(unroutable)} unroutable messages were lost: "
              f"{', '.join(repr(k) for k in lost)} never reached `catch_all_queue`")
    fb.expect(EX3_ROUTED not in got_catch, "`catch_all_queue` also received the routable 'paid' message; "
              "only messages that match no binding should reach it")
    return (f"'paid' reached its queue, and all {len(unroutable)} unroutable messages "
            f"({', '.join(repr(k) for k in unroutable)}) were caught in `catch_all_queue` instead of being dropped")


@check(4, "feed the `audit` fanout from the `events` topic exchange with every orders event")
def ex4(fb, connect):
    if fb.unset("connect", connect):
        return
    with _Sandbox() as box:
        channel = box.channel()
        events = box.exchange(channel, "lab05-events", "topic")
        audit = box.exchange(channel, "lab05-audit", "fanout")
        queues = {"audit-log": box.queue(channel, "lab05-audit-log"), "archive": box.queue(channel, "lab05-archive")}
        for q in queues.values():
            channel.queue_bind(q, audit)
        ok, _ = learner_call(fb, "your connect()", connect, box.channel(), events, audit)
        if not ok:
            return
        def fetch():
            return (brokers.management_get(f"/api/exchanges/%2F/{events}/bindings/source"),
                    brokers.management_get(f"/api/exchanges/%2F/{audit}/bindings/source"))

        out_of_events, out_of_audit = _eventually(fetch, lambda r: r[0] or len(r[1]) > len(queues))
        forward = [b for b in out_of_events if b["destination"] == audit and b["destination_type"] == "exchange"]
        backward = [b for b in out_of_audit if b["destination"] == events]
        direct_to_queues = [b for b in out_of_events if b["destination"] in queues.values()]
        if backward and not forward:
            fb.expect(False, "the broker has a binding from `audit` to `events`, the wrong way round: "
                      "exchange_bind(destination, source, routing_key) takes the destination first, so call "
                      "channel.exchange_bind(destination=audit, source=events, routing_key=...)")
            return
        fb.expect(not direct_to_queues, "you bound queues straight to `events`; bind the `audit` exchange instead "
                  "(its queues may change, the exchange-to-exchange binding should not)")
        if not fb.expect(forward, "the broker has no binding from the `events` exchange to the `audit` exchange; "
                         "use channel.exchange_bind(destination=audit, source=events, routing_key=...)"):
            return
        for key in EX4_KEYS:
            channel.basic_publish(events, key, key.encode())
        received = {label: _bodies(channel, q) for label, q in queues.items()}

    patterns = [b["routing_key"] for b in forward]
    want = [k for k, yes in EX4_KEYS.items() if yes]
    for label, got in received.items():
        missing = [k for k in want if k not in got]
        extra = [k for k in EX4_KEYS if k in got and k not in want]
        fb.expect(not missing, f"`{label}` (fed through your binding {patterns}) did not receive {_keys(missing)}"
                  + (" (`*` matches exactly one word; `#` matches zero or more)" if any("*" in p for p in patterns) else ""))
        fb.expect(not extra, f"`{label}` (fed through your binding {patterns}) also received {_keys(extra)}, "
                  "which are not orders events")
    return (f"`events` -> `audit` with {patterns}: both audit queues received exactly the "
            f"{len(want)} orders events and none of the others")
