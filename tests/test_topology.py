"""docker-compose.yml, the native backend and the pins agree (no Docker engine runs in CI, so
the compose file is proven by reading it)."""
import re
import tomllib

import yaml

from helpers.brokers import KAFKA_CLUSTER_ID, kafka_version
from helpers.config import ROOT
from helpers.topology import KAFKA_NODES, NODES, RABBIT_NODES, RABBITMQ_PLUGINS

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
INTERNAL = {"controller", "dist"}  # node-to-node ports, not published to the host


def test_same_node_names():
    assert list(SERVICES) == list(NODES)


def test_every_published_port_matches_the_native_ports_on_loopback_only():
    for name, n in NODES.items():
        published = {}
        for mapping in SERVICES[name]["ports"]:
            host, host_port, container_port = mapping.split(":")
            assert host == "127.0.0.1", f"{name} publishes {mapping} beyond loopback"
            assert host_port == container_port
            published[int(host_port)] = mapping
        expected = {port for purpose, port in n.ports.items() if purpose not in INTERNAL}
        assert set(published) == expected, name


def test_kafka_version_cluster_and_quorum_agree():
    assert re.fullmatch(r"\d+\.\d+\.\d+", kafka_version())
    major, minor, _ = map(int, kafka_version().split("."))
    assert (major, minor) >= (4, 2), "share groups need Kafka 4.2 or newer"
    env = SERVICES["kafka-1"]["environment"]
    assert env["CLUSTER_ID"] == KAFKA_CLUSTER_ID
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == ",".join(
        f"{n.index}@{n.name}:{n.ports['controller']}" for n in KAFKA_NODES)
    for n in KAFKA_NODES:
        svc = SERVICES[n.name]
        assert svc["image"] == f"apache/kafka:{kafka_version()}"
        assert svc["environment"]["KAFKA_NODE_ID"] == n.index
        assert svc["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert f"PLAINTEXT://127.0.0.1:{n.ports['kafka']}" in svc["environment"]["KAFKA_ADVERTISED_LISTENERS"]
        assert "healthcheck" in svc
        assert svc["environment"]["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 3


def test_rabbitmq_images_plugins_and_listeners():
    plugins = (ROOT / "docker" / "rabbitmq" / "enabled_plugins").read_text()
    assert plugins.strip() == "[" + ",".join(RABBITMQ_PLUGINS) + "]."
    for n in RABBIT_NODES:
        svc = SERVICES[n.name]
        assert re.fullmatch(r"rabbitmq:4\.\d+(\.\d+)?-management", svc["image"])
        assert "bitnami" not in svc["image"]
        assert "healthcheck" in svc
        conf = (ROOT / "docker" / "rabbitmq" / f"{n.name}.conf").read_text()
        for key, purpose in (("listeners.tcp.default", "amqp"), ("management.tcp.port", "management"),
                             ("mqtt.listeners.tcp.default", "mqtt"), ("stomp.listeners.tcp.1", "stomp"),
                             ("stream.listeners.tcp.1", "stream"), ("stream.advertised_port", "stream")):
            assert f"{key} = {n.ports[purpose]}\n" in conf, (n.name, key)
        for m in RABBIT_NODES:
            assert f"rabbit@{m.name}" in conf


def test_first_nodes_use_the_standard_ports():
    assert NODES["kafka-1"].ports["kafka"] == 9092
    assert (NODES["rabbit-1"].ports["amqp"], NODES["rabbit-1"].ports["management"]) == (5672, 15672)


def test_environment_yml_mirrors_the_pyproject_pins():
    pins = {}
    for dep in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        name, version = dep.split("==")
        pins[name] = version
    env = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    conda = dict(d.split("=", 1) for d in env if isinstance(d, str) and "=" in d)
    pip = dict(d.split("==") for d in next(d["pip"] for d in env if isinstance(d, dict)) if "==" in d)
    conda_name = {"confluent-kafka": "python-confluent-kafka"}
    for name, version in pins.items():
        found = conda.get(conda_name.get(name, name)) or pip.get(name)
        assert found == version, f"{name}: pyproject pins {version}, environment.yml has {found}"
