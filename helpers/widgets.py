"""Interactive helpers for the lessons: the RabbitMQ routing playground of lesson 05.

Everything here asks the **real broker** where a message went: it publishes one message with
publisher confirms on, then reads the queues back with ``basic_get``. Nothing is computed
from the binding rules, so what you see is what RabbitMQ did.

Typical use in a notebook (the names are the ones your notebook declared)::

    from helpers import rabbit, widgets

    def open_channel():
        channel = rabbit.connect().channel()
        channel.confirm_delivery()
        return channel

    channel = open_channel()
    widgets.probe(channel, topic_exchange, {"billing": billing_queue}, "orders.eu.paid")   # {'billing': 1}
    widgets.routing_playground(open_channel, {"topic": topic_exchange}, {"billing": billing_queue})
"""
from __future__ import annotations

import uuid

import pika

NOWHERE = "nowhere: no binding matched, the broker dropped it"


def parse_headers(text: str) -> dict:
    """``"format=pdf, type=report"`` -> ``{"format": "pdf", "type": "report"}`` (values stay strings).

    >>> parse_headers("format=pdf, type=report")
    {'format': 'pdf', 'type': 'report'}
    >>> parse_headers("")
    {}
    """
    headers = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise ValueError(f"header {part.strip()!r} has no '=': write name=value, name=value")
        name, value = part.split("=", 1)
        headers[name.strip()] = value.strip()
    return headers


def collect(channel, queue: str, keep=None) -> list:
    """Take the messages of ``queue`` that ``keep(properties, body)`` accepts; put the others back.

    Returns ``[(properties, body), ...]`` of the kept messages (they are acknowledged, so they
    leave the queue). Messages that ``keep`` rejects are requeued untouched, so a probe never
    eats messages that were already waiting. With ``keep=None`` every message is taken.
    """
    kept, others = [], []
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=False)
        if method is None:
            break
        if keep is None or keep(properties, body):
            kept.append((properties, body))
            channel.basic_ack(method.delivery_tag)
        else:
            others.append(method.delivery_tag)
    for tag in others:
        channel.basic_nack(tag, requeue=True)
    return kept


def probe(channel, exchange: str, queues: dict, routing_key: str = "", headers: dict | None = None,
          body: bytes = b"probe") -> dict:
    """Publish one message to ``exchange`` and return ``{label: copies received}`` per queue.

    ``queues`` maps a short label (what you print) to the real queue name. The channel should
    have publisher confirms on (``channel.confirm_delivery()``): then ``basic_publish`` returns
    only once the broker has routed the message, and ``basic_get`` sees it. The message carries
    a unique ``message_id``, and only copies with that id are taken from the queues.
    """
    message_id = uuid.uuid4().hex
    properties = pika.BasicProperties(message_id=message_id, headers=headers or None)
    channel.basic_publish(exchange, routing_key, body, properties)
    return {label: len(collect(channel, queue, lambda p, b: p.message_id == message_id))
            for label, queue in queues.items()}


def describe(copies: dict) -> str:
    """One line for a probe result: the queues that got a copy (``x2`` for two copies), or nowhere.

    >>> describe({"billing": 1, "audit": 2, "shipping": 0})
    'billing, audit x2'
    >>> describe({"billing": 0})
    'nowhere: no binding matched, the broker dropped it'
    """
    got = [label if n == 1 else f"{label} x{n}" for label, n in copies.items() if n]
    return ", ".join(got) if got else NOWHERE


def route_table(channel, exchange: str, queues: dict, messages: list, title: str = "routing key") -> str:
    """Probe each message and return an aligned table: one row per message, one column per queue.

    ``messages`` holds routing keys (str) or ``(routing_key, headers)`` pairs. A cell shows
    ``✓`` for one copy, ``✓N`` for N copies and ``·`` for none; the last column lists the
    queues that received the message, read back from the broker.
    """
    rows = []
    for m in messages:
        key, headers = (m, None) if isinstance(m, str) else m
        copies = probe(channel, exchange, queues, key, headers)
        label = repr(key) if headers is None else ", ".join(f"{k}={v}" for k, v in headers.items()) or "(no headers)"
        rows.append([label] + ["·" if n == 0 else "✓" if n == 1 else f"✓{n}" for n in copies.values()])
    header = [title] + list(queues)
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + rows]
    return "\n".join(lines)


def routing_playground(channel_factory, exchanges: dict, queues: dict, routing_key: str = "",
                       headers: str = ""):
    """An ipywidgets form: pick an exchange, type a routing key and headers, press **Publish**.

    ``channel_factory()`` must return a fresh channel (ideally with publisher confirms on); the
    playground opens one per click and closes its connection afterwards, so an idle notebook
    never holds a connection that misses heartbeats. ``exchanges`` maps a label to an exchange
    name; ``queues`` maps a label to a queue name. The answer (which queues received the
    message) is read back from the broker by :func:`probe`, and appended to a history list.
    """
    import ipywidgets as w

    exchange = w.Dropdown(options=list(exchanges.items()), description="exchange")
    key = w.Text(value=routing_key, description="routing key", placeholder="orders.eu.paid")
    hdrs = w.Text(value=headers, description="headers", placeholder="format=pdf, type=report")
    button = w.Button(description="Publish", button_style="primary", icon="paper-plane")
    out = w.Output()

    def on_click(_):
        with out:
            try:
                parsed = parse_headers(hdrs.value)
            except ValueError as e:
                print(f"✗ {e}")
                return
            channel = None
            try:
                channel = channel_factory()
                copies = probe(channel, exchange.value, queues, key.value, parsed)
                label = next(lbl for lbl, name in exchanges.items() if name == exchange.value)
                shown = f" headers {parsed}" if parsed else ""
                print(f"{label}: key {key.value!r}{shown} -> {describe(copies)}")
            except pika.exceptions.AMQPError as e:
                print(f"✗ the broker refused: {e!r} (were the exchanges and queues deleted already?)")
            finally:
                if channel is not None and channel.connection.is_open:
                    channel.connection.close()

    button.on_click(on_click)
    return w.VBox([w.HBox([exchange, button]), key, hdrs, out])
