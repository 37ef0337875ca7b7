"""Key -> partition, the way the two Kafka client families compute it (lesson 03).

A Kafka producer, not the broker, picks the partition of a keyed record: it hashes the key's
bytes and takes the result modulo the partition count. The two client families hash differently:

- the **Java client** (and Kafka Streams, Kafka Connect, the console tools) uses **murmur2**:
  ``Utils.toPositive(Utils.murmur2(key)) % n``;
- **librdkafka** (confluent-kafka for Python, Go, .NET, C/C++) defaults to
  ``partitioner=consistent_random``: **CRC32** of the key modulo ``n``. Its ``murmur2_random``
  partitioner is the Java-compatible one.

>>> java_partition(b"alice", 6), librdkafka_partition(b"alice", 6)
(3, 5)

The functions here are pure Python, so you can compute a placement without a broker; lesson 03
checks every one of them against placements the real brokers report.
"""
from __future__ import annotations

import json
import zlib

SEED = 0x9747B28C  # Kafka's murmur2 seed (org.apache.kafka.common.utils.Utils.murmur2)
_M, _R, _MASK = 0x5BD1E995, 24, 0xFFFFFFFF


def as_bytes(key) -> bytes:
    """A key as the producer sends it: ``str`` is encoded as UTF-8, ``bytes`` stay as they are.

    >>> as_bytes("café")
    b'caf\\xc3\\xa9'
    """
    return key.encode("utf-8") if isinstance(key, str) else bytes(key)


def murmur2(data: bytes) -> int:
    """Kafka's 32-bit murmur2 hash of ``data``, as a **signed** int exactly like Java's ``Utils.murmur2``.

    Java does this arithmetic on 32-bit ints that wrap around; Python ints do not wrap, so every
    step is masked to 32 bits, and the result is turned back into a signed value at the end.

    >>> murmur2(b"21")          # a test vector from Kafka's own UtilsTest
    -973932308
    """
    data = as_bytes(data)
    length = len(data)
    h = (SEED ^ length) & _MASK
    full = length - length % 4
    for i in range(0, full, 4):
        k = data[i] | data[i + 1] << 8 | data[i + 2] << 16 | data[i + 3] << 24  # little-endian
        k = (k * _M) & _MASK
        k ^= k >> _R
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length % 4  # the last 1-3 bytes, same fall-through as Java's switch
    if rest == 3:
        h ^= data[full + 2] << 16
    if rest >= 2:
        h ^= data[full + 1] << 8
    if rest >= 1:
        h ^= data[full]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def java_partition(key, n: int) -> int:
    """The partition the Java client's default partitioner gives a non-null ``key`` on an ``n``-partition topic.

    ``Utils.toPositive(Utils.murmur2(key)) % n``, where ``toPositive`` clears the sign bit
    (``& 0x7fffffff``; it is not ``abs()``). librdkafka's ``partitioner=murmur2_random`` computes the same.

    >>> java_partition("alice", 6)
    3
    """
    return (murmur2(as_bytes(key)) & 0x7FFFFFFF) % n


def librdkafka_partition(key, n: int) -> int | None:
    """The partition librdkafka's default partitioner (``consistent_random``) gives ``key`` on ``n`` partitions.

    CRC32 of the key bytes (the same CRC-32 as ``zlib.crc32``), modulo ``n``. A null or empty key
    has no fixed partition (librdkafka then picks one at random, sticking to it for a few
    milliseconds): that case returns ``None``.

    >>> librdkafka_partition("alice", 6)
    5
    """
    data = None if key is None else as_bytes(key)
    if not data:
        return None
    return zlib.crc32(data) % n


PARTITIONERS = {"librdkafka default (CRC32)": librdkafka_partition, "Java default (murmur2)": java_partition}


def zipf_weights(n_keys: int, skew: float) -> list:
    """Relative traffic of key 1, 2, ... n: ``1 / rank ** skew`` (0 = all equal, 1 = Zipf, more = hotter head).

    >>> [round(w, 2) for w in zipf_weights(4, 1.0)]
    [1.0, 0.5, 0.33, 0.25]
    """
    return [1 / (rank ** skew) for rank in range(1, n_keys + 1)]


def expected_counts(n_partitions: int, n_keys: int, skew: float, messages: int = 10_000,
                    partitioner=librdkafka_partition, key_format: str = "customer-{}") -> list:
    """Messages per partition when ``messages`` are spread over ``n_keys`` keys with Zipf ``skew``.

    Keys are ``customer-1`` ... ``customer-N`` (rank 1 is the hottest). Pure arithmetic: no broker.

    >>> expected_counts(3, 3, 0.0, messages=300)
    [200, 0, 100]
    """
    weights = zipf_weights(n_keys, skew)
    total = sum(weights)
    counts = [0.0] * n_partitions
    for rank, w in enumerate(weights, start=1):
        counts[partitioner(key_format.format(rank), n_partitions)] += messages * w / total
    return [round(c) for c in counts]


def plot_distribution(ax, counts, title: str = "") -> None:
    """Bars of messages per partition, with the mean as a dashed line and max/mean in the title."""
    mean = sum(counts) / len(counts) if counts else 0
    ax.bar(range(len(counts)), counts, color="tab:blue")
    ax.axhline(mean, color="tab:red", linestyle="--", linewidth=1, label="mean")
    ax.set_xlabel("partition")
    ax.set_ylabel("messages")
    if len(counts) <= 24:
        ax.set_xticks(range(len(counts)))
    skew = max(counts) / mean if mean else 0
    ax.set_title(f"{title}{' | ' if title else ''}max/mean = {skew:.2f}")
    ax.legend(loc="upper right")


def distribution_explorer(messages: int = 10_000):
    """An ipywidgets control: partitions x keys x skew x partitioner -> bar chart of messages per partition.

    Everything is computed with the functions above (no broker), so it answers instantly. The
    chart is drawn off-screen into an ``Image`` widget, so the cell prints nothing besides the
    widget itself. Returns the widget; display it by leaving it as the last expression of a cell.
    """
    import io

    import ipywidgets as w
    from matplotlib.figure import Figure

    partitions = w.IntSlider(value=6, min=1, max=48, description="partitions")
    keys = w.IntSlider(value=20, min=1, max=500, description="keys")
    skew = w.FloatSlider(value=1.0, min=0.0, max=2.5, step=0.1, description="skew")
    which = w.Dropdown(options=list(PARTITIONERS), description="partitioner",
                       style={"description_width": "initial"})
    chart = w.Image(format="png")

    def draw(_=None):
        counts = expected_counts(partitions.value, keys.value, skew.value, messages, PARTITIONERS[which.value])
        fig = Figure(figsize=(8, 3))
        plot_distribution(fig.subplots(), counts, f"{keys.value} keys, skew {skew.value:.1f}, {partitions.value} partitions")
        fig.tight_layout()
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=90)
        chart.value = png.getvalue()

    for control in (partitions, keys, skew, which):
        control.observe(draw, names="value")
    draw()
    return w.VBox([w.HBox([partitions, keys]), w.HBox([skew, which]), chart])


def java_placements(topic: str, n_keys: int) -> dict:
    """Produce keys ``"0"`` ... ``str(n_keys - 1)`` with the **real Java client** and return ``{key: partition}``.

    Runs Kafka's own ``VerifiableProducer`` tool (the Java ``KafkaProducer`` with its default
    partitioner and a ``StringSerializer`` for keys), which reports the partition of every
    acknowledged record. With the docker backend the tool runs inside the ``kafka-1`` container
    and connects through the brokers' internal listener.
    """
    from . import brokers
    from .config import settings

    backend = brokers.backend()
    bootstrap = settings().kafka_bootstrap_servers
    if isinstance(backend, brokers.DockerBackend) and settings().is_local:
        bootstrap = "kafka-1:19092"
    out = backend.kafka_tool("org.apache.kafka.tools.VerifiableProducer", "--bootstrap-server", bootstrap,
                             "--topic", topic, "--max-messages", str(n_keys), "--repeating-keys", str(n_keys),
                             "--acks", "-1")
    placed = {}
    for line in out.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("name") == "producer_send_success":
                placed[event["key"]] = event["partition"]
    return placed
