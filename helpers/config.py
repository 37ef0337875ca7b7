"""Connection settings, read from the environment and from ``.env`` at the top of the checkout.

The environment wins over ``.env``; both fall back to the local cluster that
``python -m helpers.brokers up`` starts. A workshop points every notebook at a shared
cluster by setting these variables (README.md lists them all), without editing a notebook.

>>> from helpers.config import settings
>>> settings().prefix
'sop'
"""
from __future__ import annotations

import logging
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from .errors import ConfigError
from .topology import DEFAULT_AMQP_URLS, DEFAULT_BOOTSTRAP, DEFAULT_MANAGEMENT_URL

ROOT = Path(__file__).resolve().parent.parent

BACKENDS = ("auto", "docker", "native")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

#: name -> (default, what a valid value looks like). README.md documents the same table.
SETTINGS = {
    "SOP_BACKEND": ("auto", "one of auto, docker, native"),
    "SOP_PREFIX": ("sop", "2-20 lowercase letters, digits or '-', starting with a letter, e.g. 'ada'"),
    "SOP_KAFKA_BOOTSTRAP_SERVERS": (DEFAULT_BOOTSTRAP, "comma-separated host:port pairs, e.g. 127.0.0.1:9092"),
    "SOP_KAFKA_SECURITY_PROTOCOL": ("PLAINTEXT", "one of " + ", ".join(SECURITY_PROTOCOLS)),
    "SOP_KAFKA_SASL_MECHANISM": ("PLAIN", "one of " + ", ".join(SASL_MECHANISMS)),
    "SOP_KAFKA_SASL_USERNAME": ("", "the SASL user name (needed with SASL_PLAINTEXT or SASL_SSL)"),
    "SOP_KAFKA_SASL_PASSWORD": ("", "the SASL password (needed with SASL_PLAINTEXT or SASL_SSL)"),
    "SOP_KAFKA_SSL_CA_LOCATION": ("", "path to an existing CA certificate file (PEM)"),
    "SOP_AMQP_URLS": (DEFAULT_AMQP_URLS, "comma-separated amqp:// or amqps:// URLs, e.g. amqp://guest:guest@127.0.0.1:5672/%2F"),
    "SOP_MANAGEMENT_URL": (DEFAULT_MANAGEMENT_URL, "an http:// or https:// URL with credentials, e.g. http://guest:guest@127.0.0.1:15672"),
    "SOP_STATE_DIR": (str(ROOT / ".brokers"), "a folder path for the native backend's state"),
    "SOP_ERLANG_COOKIE": ("systems-of-power-local-cookie", "20-255 letters or digits, '-' or '_'"),
}

_HOSTPORT = re.compile(r"^[A-Za-z0-9_.\-]+:(\d{1,5})$")
_PREFIX = re.compile(r"^[a-z][a-z0-9-]{1,19}$")
_COOKIE = re.compile(r"^[A-Za-z0-9_\-]{20,255}$")


def _bad(name: str, value: str, source: str, why: str = "") -> ConfigError:
    expected = SETTINGS[name][1]
    if "PASSWORD" in name or "COOKIE" in name:
        value = "***"  # never echo a secret
    extra = f" ({why})" if why else ""
    return ConfigError(f"{name}={value!r} from {source} is not valid{extra}; expected {expected}.")


def read_env_file(path: Path) -> dict:
    """Parse a ``.env`` file (KEY=VALUE lines, ``#`` comments). A missing file is empty."""
    if not path.exists():
        return {}
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


@dataclass(frozen=True)
class Settings:
    backend: str
    prefix: str
    kafka_bootstrap_servers: str
    kafka_security_protocol: str
    kafka_sasl_mechanism: str
    kafka_sasl_username: str
    kafka_sasl_password: str
    kafka_ssl_ca_location: str
    amqp_urls: tuple
    management_url: str
    state_dir: Path
    erlang_cookie: str

    @property
    def is_local(self) -> bool:
        """True when the settings point at the cluster this checkout starts."""
        return self.kafka_bootstrap_servers == DEFAULT_BOOTSTRAP and ",".join(self.amqp_urls) == DEFAULT_AMQP_URLS


def load(environ: dict | None = None, env_file: Path | None = None) -> Settings:
    """Read and validate every setting; raise ``ConfigError`` naming the first bad one.

    >>> load({"SOP_PREFIX": "ada"}).prefix
    'ada'
    """
    environ = os.environ if environ is None else environ
    env_file = Path(environ.get("SOP_ENV_FILE", ROOT / ".env")) if env_file is None else env_file
    from_file = read_env_file(env_file)

    raw, source = {}, {}
    for name, (default, _) in SETTINGS.items():
        if name in environ:
            raw[name], source[name] = environ[name].strip(), "the environment"
        elif name in from_file:
            raw[name], source[name] = from_file[name].strip(), str(env_file)
        else:
            raw[name], source[name] = default, "the defaults"

    def check(name, ok, why=""):
        if not ok:
            raise _bad(name, raw[name], source[name], why)

    check("SOP_BACKEND", raw["SOP_BACKEND"] in BACKENDS)
    check("SOP_PREFIX", bool(_PREFIX.match(raw["SOP_PREFIX"])))
    servers = [s.strip() for s in raw["SOP_KAFKA_BOOTSTRAP_SERVERS"].split(",")]
    for s in servers:
        m = _HOSTPORT.match(s)
        check("SOP_KAFKA_BOOTSTRAP_SERVERS", bool(m), f"{s!r} is not host:port")
        check("SOP_KAFKA_BOOTSTRAP_SERVERS", 0 < int(m.group(1)) < 65536, f"port in {s!r} is out of range")
    protocol = raw["SOP_KAFKA_SECURITY_PROTOCOL"].upper()
    check("SOP_KAFKA_SECURITY_PROTOCOL", protocol in SECURITY_PROTOCOLS)
    mechanism = raw["SOP_KAFKA_SASL_MECHANISM"].upper()
    check("SOP_KAFKA_SASL_MECHANISM", mechanism in SASL_MECHANISMS)
    if protocol.startswith("SASL"):
        for name in ("SOP_KAFKA_SASL_USERNAME", "SOP_KAFKA_SASL_PASSWORD"):
            check(name, bool(raw[name]), f"SOP_KAFKA_SECURITY_PROTOCOL is {protocol}")
    ca = raw["SOP_KAFKA_SSL_CA_LOCATION"]
    check("SOP_KAFKA_SSL_CA_LOCATION", not ca or Path(ca).is_file(), "no such file")
    urls = tuple(u.strip() for u in raw["SOP_AMQP_URLS"].split(","))
    for u in urls:
        p = urlparse(u)
        check("SOP_AMQP_URLS", p.scheme in ("amqp", "amqps") and bool(p.hostname), f"{u!r} is not an AMQP URL")
        try:
            p.port
        except ValueError:
            check("SOP_AMQP_URLS", False, f"port in {u!r} is not a number from 1 to 65535")
    m = urlparse(raw["SOP_MANAGEMENT_URL"])
    check("SOP_MANAGEMENT_URL", m.scheme in ("http", "https") and bool(m.hostname))
    check("SOP_ERLANG_COOKIE", bool(_COOKIE.match(raw["SOP_ERLANG_COOKIE"])))

    return Settings(
        backend=raw["SOP_BACKEND"],
        prefix=raw["SOP_PREFIX"],
        kafka_bootstrap_servers=",".join(servers),
        kafka_security_protocol=protocol,
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username=raw["SOP_KAFKA_SASL_USERNAME"],
        kafka_sasl_password=raw["SOP_KAFKA_SASL_PASSWORD"],
        kafka_ssl_ca_location=ca,
        amqp_urls=urls,
        management_url=raw["SOP_MANAGEMENT_URL"].rstrip("/"),
        state_dir=Path(raw["SOP_STATE_DIR"]),
        erlang_cookie=raw["SOP_ERLANG_COOKIE"],
    )


_cached: Settings | None = None


def settings() -> Settings:
    """The settings of this process, read once."""
    global _cached
    if _cached is None:
        _cached = load()
    return _cached


# --- what notebooks call ------------------------------------------------------------

_quiet = logging.getLogger("helpers.librdkafka")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


def kafka_config(**overrides) -> dict:
    """A confluent-kafka configuration for the configured cluster, plus your own keys.

    Dots in Kafka property names become underscores in keyword arguments; confluent-kafka's
    callback keys (``on_delivery``, ``stats_cb``, ...) keep theirs.

    >>> kafka_config(client_id="demo")["client.id"]
    'demo'
    >>> sorted(k for k in kafka_config(stats_cb=print, **{"linger.ms": 5}) if k != "logger")
    ['bootstrap.servers', 'linger.ms', 'stats_cb']
    """
    s = settings()
    conf = {"bootstrap.servers": s.kafka_bootstrap_servers, "logger": _quiet}
    if s.kafka_security_protocol != "PLAINTEXT":
        conf["security.protocol"] = s.kafka_security_protocol
    if s.kafka_security_protocol.startswith("SASL"):
        conf.update({
            "sasl.mechanism": s.kafka_sasl_mechanism,
            "sasl.username": s.kafka_sasl_username,
            "sasl.password": s.kafka_sasl_password,
        })
    if s.kafka_ssl_ca_location:
        conf["ssl.ca.location"] = s.kafka_ssl_ca_location
    conf.update({k if k in _PYTHON_KEYS or "." in k else k.replace("_", "."): v for k, v in overrides.items()})
    return conf


# confluent-kafka's own keys, which keep their underscores (callbacks, and its dict-only options)
_PYTHON_KEYS = {"on_delivery", "error_cb", "throttle_cb", "stats_cb", "oauth_cb", "on_commit", "logger"}


def amqp_url(node: int = 1) -> str:
    """The AMQP URL of node 1, 2 or 3 (a shared cluster may list fewer; they wrap around)."""
    urls = settings().amqp_urls
    return urls[(node - 1) % len(urls)]


def amqp_parameters(node: int = 1, **overrides):
    """``pika.URLParameters`` for a node, e.g. ``pika.BlockingConnection(amqp_parameters())``."""
    import pika

    params = pika.URLParameters(amqp_url(node))
    for key, value in overrides.items():
        setattr(params, key, value)
    return params


def unique_name(stem: str) -> str:
    """A topic, queue or exchange name in the learner's namespace, unique per call.

    >>> unique_name("orders").startswith(settings().prefix + "-orders-")
    True
    """
    return f"{settings().prefix}-{stem}-{secrets.token_hex(3)}"


def owned(name: str) -> bool:
    """True when a resource name belongs to this learner's namespace (``reset`` deletes only these)."""
    return name.startswith(settings().prefix + "-")
