"""helpers.config: defaults, precedence of the environment over .env, and a clear error per bad setting."""
import pytest

from helpers import config
from helpers.config import ConfigError, load
from helpers.topology import DEFAULT_BOOTSTRAP


def test_defaults_point_at_the_local_cluster(tmp_path):
    s = load({}, env_file=tmp_path / "missing.env")
    assert s.kafka_bootstrap_servers == DEFAULT_BOOTSTRAP == "127.0.0.1:9092,127.0.0.1:9192,127.0.0.1:9292"
    assert s.amqp_urls[0] == "amqp://guest:guest@127.0.0.1:5672/%2F"
    assert s.management_url == "http://guest:guest@127.0.0.1:15672"
    assert (s.prefix, s.backend, s.kafka_security_protocol) == ("sop", "auto", "PLAINTEXT")
    assert s.is_local


def test_env_file_is_read_and_the_environment_wins(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("# a workshop cluster\nSOP_PREFIX=ada\nSOP_KAFKA_BOOTSTRAP_SERVERS=kafka.example:9094\n")
    s = load({"SOP_PREFIX": "grace"}, env_file=env_file)
    assert s.prefix == "grace"
    assert s.kafka_bootstrap_servers == "kafka.example:9094"
    assert not s.is_local


@pytest.mark.parametrize("name, value, words", [
    ("SOP_BACKEND", "podman", "one of auto, docker, native"),
    ("SOP_PREFIX", "Ada Lovelace", "lowercase letters"),
    ("SOP_PREFIX", "x", "2-20"),
    ("SOP_KAFKA_BOOTSTRAP_SERVERS", "localhost", "'localhost' is not host:port"),
    ("SOP_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:99999", "out of range"),
    ("SOP_KAFKA_SECURITY_PROTOCOL", "TLS", "one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
    ("SOP_KAFKA_SASL_MECHANISM", "GSSAPI", "one of PLAIN"),
    ("SOP_KAFKA_SSL_CA_LOCATION", "/nonexistent/ca.pem", "no such file"),
    ("SOP_AMQP_URLS", "http://127.0.0.1:5672", "is not an AMQP URL"),
    ("SOP_AMQP_URLS", "amqp://127.0.0.1:port/", "port"),
    ("SOP_MANAGEMENT_URL", "127.0.0.1:15672", "http://"),
    ("SOP_ERLANG_COOKIE", "short", "20-255"),
])
def test_a_malformed_setting_is_named_with_the_expected_form(tmp_path, name, value, words):
    with pytest.raises(ConfigError) as e:
        load({name: value}, env_file=tmp_path / "none")
    message = str(e.value)
    assert message.startswith(f"{name}=")
    assert "from the environment" in message
    assert words in message


def test_a_malformed_setting_in_env_file_names_the_file(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("SOP_BACKEND=kubernetes\n")
    with pytest.raises(ConfigError, match=r"SOP_BACKEND='kubernetes' from .*\.env is not valid"):
        load({}, env_file=env_file)


def test_sasl_needs_credentials_and_secrets_are_never_echoed(tmp_path):
    with pytest.raises(ConfigError, match="SOP_KAFKA_SASL_USERNAME.*SASL_SSL"):
        load({"SOP_KAFKA_SECURITY_PROTOCOL": "sasl_ssl"}, env_file=tmp_path / "none")
    with pytest.raises(ConfigError) as e:
        load({"SOP_ERLANG_COOKIE": "hunter2"}, env_file=tmp_path / "none")
    assert "hunter2" not in str(e.value) and "***" in str(e.value)


def test_kafka_config_carries_security_settings(fresh_settings, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    for k, v in {"SOP_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "SOP_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                 "SOP_KAFKA_SASL_USERNAME": "ada", "SOP_KAFKA_SASL_PASSWORD": "s3cret",
                 "SOP_KAFKA_SSL_CA_LOCATION": str(ca), "SOP_KAFKA_BOOTSTRAP_SERVERS": "k1:9096,k2:9096"}.items():
        fresh_settings.setenv(k, v)
    conf = config.kafka_config(client_id="lesson", acks="all")
    assert conf["bootstrap.servers"] == "k1:9096,k2:9096"
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (conf["sasl.username"], conf["sasl.password"]) == ("ada", "s3cret")
    assert conf["ssl.ca.location"] == str(ca)
    assert (conf["client.id"], conf["acks"]) == ("lesson", "all")


def test_local_kafka_config_is_plaintext_and_quiet(fresh_settings):
    conf = config.kafka_config()
    assert "security.protocol" not in conf
    assert conf["logger"].name == "helpers.librdkafka" and not conf["logger"].propagate


def test_names_live_in_the_learner_namespace(fresh_settings):
    fresh_settings.setenv("SOP_PREFIX", "ada")
    a, b = config.unique_name("orders"), config.unique_name("orders")
    assert a.startswith("ada-orders-") and a != b
    assert config.owned(a)
    assert not config.owned("orders") and not config.owned("adam-orders")


def test_amqp_urls_wrap_around_a_shorter_list(fresh_settings):
    fresh_settings.setenv("SOP_AMQP_URLS", "amqps://u:p@mq.example:5671/course")
    assert config.amqp_url(3) == "amqps://u:p@mq.example:5671/course"
    params = config.amqp_parameters(2, heartbeat=30)
    assert (params.host, params.port, params.virtual_host, params.heartbeat) == ("mq.example", 5671, "course", 30)


def test_kafka_config_keeps_callback_keys_and_converts_property_names():
    conf = config.kafka_config(linger_ms=5, on_delivery=print, stats_cb=print, **{"enable.idempotence": True})
    assert conf["linger.ms"] == 5 and conf["enable.idempotence"] is True
    assert conf["on_delivery"] is print and conf["stats_cb"] is print
    assert "on.delivery" not in conf and "stats.cb" not in conf
