"""Small RabbitMQ helpers for lessons and checks.

>>> from helpers import rabbit
>>> connection = rabbit.connect()
>>> channel = connection.channel()
>>> rabbit.queue_depth(channel, "some-queue")   # None when the queue does not exist
"""
from __future__ import annotations

import pika

from .config import amqp_parameters, unique_name


def connect(node: int = 1, **overrides) -> pika.BlockingConnection:
    """A blocking connection to node 1, 2 or 3. Use it in one thread only, and close it in the
    same cell or soon: an idle blocking connection misses heartbeats and the broker drops it."""
    return pika.BlockingConnection(amqp_parameters(node, **overrides))


def queue_depth(channel, queue: str):
    """Ready messages in ``queue``, or None when it does not exist (the channel survives either way)."""
    probe = channel.connection.channel()
    try:
        return probe.queue_declare(queue, passive=True).method.message_count
    except pika.exceptions.ChannelClosedByBroker:
        return None
    finally:
        if probe.is_open:
            probe.close()


def delete(connection, queues=(), exchanges=()) -> None:
    """Delete ``queues`` then ``exchanges`` over ``connection``, each on a fresh channel, so that
    one already gone (a 404 closes its channel) does not stop the rest."""
    for remove, names in (("queue_delete", queues), ("exchange_delete", exchanges)):
        for name in names:
            channel = connection.channel()
            try:
                getattr(channel, remove)(name)
            except pika.exceptions.ChannelClosedByBroker:
                pass
            if channel.is_open:
                channel.close()


class Sandbox:
    """A connection of its own, uniquely named queues and exchanges, and a clean-up that deletes
    exactly those (nothing a learner named). Use it as a context manager.

    >>> with rabbit.Sandbox() as box:
    ...     channel = box.channel()
    ...     channel.queue_declare(box.name("demo"), durable=True)
    """

    def __init__(self):
        self.connection = connect()
        self.queues, self.exchanges = [], []

    def channel(self, confirms: bool = True):
        channel = self.connection.channel()
        if confirms:
            channel.confirm_delivery()
        return channel

    def name(self, stem: str, kind: str = "queue") -> str:
        """A fresh name, remembered for the clean-up even if someone else declares it."""
        name = unique_name(stem)
        (self.queues if kind == "queue" else self.exchanges).append(name)
        return name

    def close(self):
        """Close the connection (cancelling every consumer), then delete on a fresh one: deleting a
        quorum queue while a consumer on the same connection is being cancelled can make RabbitMQ
        3.10 close the whole connection with 541 INTERNAL_ERROR."""
        if self.connection.is_open:
            self.connection.close()
        with connect() as connection:
            delete(connection, self.queues, self.exchanges)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
