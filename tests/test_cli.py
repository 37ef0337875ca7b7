"""The command line: every failure a learner can cause ends in one sentence saying what to do."""
import socket

import pytest

from helpers import brokers
from helpers.brokers import BrokerError, NativeBackend
from helpers.topology import NODES

from .conftest import cli


def assert_clean_error(proc, *words):
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ")
    for w in words:
        assert w in proc.stderr


def test_unknown_node_lists_the_valid_ones():
    for command in ("kill", "start", "logs"):
        assert_clean_error(cli(command, "kafka-9"), "unknown node 'kafka-9'",
                           "kafka-1, kafka-2, kafka-3, rabbit-1, rabbit-2, rabbit-3")


def test_malformed_setting_is_named_without_traceback():
    assert_clean_error(cli("status", env={"SOP_KAFKA_BOOTSTRAP_SERVERS": "nine-zero-nine-two"}),
                       "SOP_KAFKA_BOOTSTRAP_SERVERS='nine-zero-nine-two'", "host:port")


@pytest.mark.skipif(brokers.DockerBackend.available()[0], reason="a Docker engine answers on this machine")
def test_docker_asked_for_without_an_engine_offers_native():
    assert_clean_error(cli("status", env={"SOP_BACKEND": "docker"}), "docker backend was asked for",
                       "SOP_BACKEND=native")


def test_java_too_old_says_which_version_is_needed(tmp_path, monkeypatch):
    fake = tmp_path / "java"
    fake.write_text('#!/bin/sh\necho \'openjdk version "11.0.22" 2024-01-16\' >&2\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BrokerError, match="Java 11 found .* needs Java 17 or newer"):
        NativeBackend().ensure_java()


def test_java_missing_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BrokerError, match="Java is not installed; the native backend needs Java 17 or newer"):
        NativeBackend().ensure_java()


def test_java_version_strings():
    assert brokers._java_major('openjdk version "17.0.15" 2025-04-15') == 17
    assert brokers._java_major('java version "1.8.0_402"') == 8
    assert brokers._java_major('openjdk version "21" 2023-09-19') == 21


def test_rabbitmq_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(brokers, "RABBIT_BIN_DIRS", [str(tmp_path)])
    monkeypatch.delenv("SOP_RABBITMQ_BIN", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BrokerError, match=r"rabbitmq-server is not installed.*apt-get install rabbitmq-server"):
        NativeBackend().rabbit_bin()


def test_a_taken_port_is_named():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(BrokerError, match=f"port {port} on 127.0.0.1 \\(kafka-1 kafka\\) is already taken"):
            brokers.ensure_port_free(port, "kafka-1 kafka", grace=0.5)


def test_unreachable_cluster_names_the_command(fresh_settings):
    fresh_settings.setenv("SOP_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    fresh_settings.setenv("SOP_AMQP_URLS", "amqp://guest:guest@127.0.0.1:1/%2F")
    with pytest.raises(BrokerError, match=r"Kafka is not reachable at 127.0.0.1:1; run `python -m helpers.brokers up`"):
        brokers.check(timeout=1)
    with pytest.raises(BrokerError, match=r"RabbitMQ is not reachable at amqp://127.0.0.1:1/%2F; run `python -m"):
        brokers.check(kafka=False, timeout=1)


@pytest.mark.brokers
def test_status_shows_every_node_up(clusters):
    proc = cli("status")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[1].split() == ["node", "role", "address", "state", "version"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert list(rows) == list(NODES)
    for name, n in NODES.items():
        assert n.address in rows[name] and " up " in rows[name], rows[name]


@pytest.mark.brokers
def test_up_when_already_up_does_nothing(clusters):
    proc = cli("up", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "already up" in proc.stdout


@pytest.mark.brokers
def test_logs_show_the_node_log(clusters):
    proc = cli("logs", "kafka-1", "-n", "5")
    assert proc.returncode == 0 and 0 < len(proc.stdout.strip().splitlines()) <= 5
    proc = cli("logs", "rabbit-1", "-n", "200")
    assert proc.returncode == 0 and "rabbit" in proc.stdout.lower()
