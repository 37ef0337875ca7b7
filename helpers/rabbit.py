"""Small RabbitMQ helpers for lessons and checks.

>>> from helpers import rabbit
>>> connection = rabbit.connect()
>>> channel = connection.channel()
>>> rabbit.queue_depth(channel, "some-queue")   # None when the queue does not exist
"""
from __future__ import annotations

import pika

from .config import amqp_parameters


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
