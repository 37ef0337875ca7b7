"""The one topology both backends run: node names, roles and ports.

Every port is on 127.0.0.1 and is the same in the docker and native backends
(``tests/test_topology.py`` proves ``docker-compose.yml`` agrees with this table).

>>> from helpers.topology import NODES
>>> NODES["kafka-1"].ports["kafka"]
9092
"""
from dataclasses import dataclass, field

HOST = "127.0.0.1"
CLUSTER_SIZE = 3

#: Plugins every RabbitMQ node enables.
RABBITMQ_PLUGINS = ("rabbitmq_management", "rabbitmq_mqtt", "rabbitmq_stomp", "rabbitmq_stream")


@dataclass(frozen=True)
class Node:
    name: str  # kafka-1 ... rabbit-3
    system: str  # "kafka" or "rabbitmq"
    index: int  # 1, 2, 3
    role: str
    ports: dict = field(hash=False)  # purpose -> port

    @property
    def address(self) -> str:
        """The address a client uses: the Kafka listener or the AMQP port."""
        main = self.ports["kafka"] if self.system == "kafka" else self.ports["amqp"]
        return f"{HOST}:{main}"


def kafka_ports(i: int) -> dict:
    """kafka-1 listens on 9092 (clients) and 9093 (KRaft controller); each next node adds 100."""
    base = 9092 + 100 * (i - 1)
    return {"kafka": base, "controller": base + 1}


def rabbit_ports(i: int) -> dict:
    """rabbit-1 uses the standard ports; rabbit-2 and rabbit-3 add 1 and 2."""
    d = i - 1
    return {
        "amqp": 5672 + d,
        "management": 15672 + d,
        "mqtt": 1883 + d,
        "stomp": 61613 + d,
        "stream": 5552 + d,
        "dist": 25672 + d,  # Erlang distribution (node-to-node and CLI tools)
    }


NODES = {}
for _i in range(1, CLUSTER_SIZE + 1):
    NODES[f"kafka-{_i}"] = Node(f"kafka-{_i}", "kafka", _i, "broker+controller", kafka_ports(_i))
for _i in range(1, CLUSTER_SIZE + 1):
    NODES[f"rabbit-{_i}"] = Node(f"rabbit-{_i}", "rabbitmq", _i, "disc node", rabbit_ports(_i))

KAFKA_NODES = [n for n in NODES.values() if n.system == "kafka"]
RABBIT_NODES = [n for n in NODES.values() if n.system == "rabbitmq"]

DEFAULT_BOOTSTRAP = ",".join(n.address for n in KAFKA_NODES)
DEFAULT_AMQP_URLS = ",".join(f"amqp://guest:guest@{n.address}/%2F" for n in RABBIT_NODES)
DEFAULT_MANAGEMENT_URL = f"http://guest:guest@{HOST}:{RABBIT_NODES[0].ports['management']}"
