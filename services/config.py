"""Connection settings shared by every driftloop process.

One frozen pydantic-settings model per concern, read from ``DRIFTLOOP_*``
environment variables:

- :class:`KafkaConfig` (``DRIFTLOOP_KAFKA_*``): bootstrap servers and the
  security options passed through to every client (kafka-python, aiokafka,
  faust);
- :class:`TopicsConfig` (``DRIFTLOOP_TOPIC_*``): the one topic prefix and the
  partition count for topics driftloop creates;
- :class:`RedisConfig` (``DRIFTLOOP_REDIS_*``): URL, ACL user, password, TLS
  and the one key prefix.

Secrets are ``SecretStr``: their ``repr`` and ``str`` print ``**********``
and :meth:`KafkaConfig.describe` / :meth:`RedisConfig.describe` never include
them, so settings can be logged.
"""

from __future__ import annotations

import re
import ssl
from typing import Any, Literal
from urllib.parse import unquote_plus, urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.errors import ConfigError

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

#: Topic names of the contract, before the prefix.
TOPIC_NAMES: dict[str, str] = {
    "inference_logs": "inference-logs",
    "feedback": "feedback",
    "training_examples": "training-examples",
    "checkpoint_events": "checkpoint-events",
    "version_events": "version-events",
    "dead_letters": "dead-letters",
    "verdicts": "verdicts",
    "shadow_scores": "shadow-scores",
}
#: Topics driftloop's workers use among themselves, before the prefix: not part
#: of the contract (nobody else reads or writes them), created by the worker
#: that needs them. ``join_repartition``: records the joiner read on another
#: partition than their request's join partition (:mod:`services.attribution.routing`).
INTERNAL_TOPIC_NAMES: dict[str, str] = {
    "join_repartition": "join-repartition",
}


class KafkaConfig(BaseSettings):
    """How to reach the Kafka cluster.

    ``bootstrap`` empty means "no external cluster": the embedded stack starts
    a broker. The rebalance and poll timeouts default to Apache Kafka's usual
    values; tests and the embedded stack shorten them because Tansu makes a
    group's first join wait for the full rebalance timeout.
    """

    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_KAFKA_", frozen=True, extra="ignore")

    bootstrap: str = ""
    client_id: str = "driftloop"
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: SecretStr | None = None
    ssl_check_hostname: bool = True
    session_timeout_ms: int = Field(default=10_000, ge=1_000)
    heartbeat_interval_ms: int = Field(default=3_000, ge=100)
    max_poll_interval_ms: int = Field(default=300_000, ge=1_000)
    request_timeout_ms: int = Field(default=30_000, ge=1_000)

    @field_validator("bootstrap")
    @classmethod
    def _check_bootstrap(cls, bootstrap: str) -> str:
        for server in (s.strip() for s in bootstrap.split(",")):
            if server:
                check_host_port(server)
        return bootstrap

    @property
    def bootstrap_servers(self) -> list[str]:
        return [s.strip() for s in self.bootstrap.split(",") if s.strip()]

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @property
    def uses_ssl(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    def _check(self) -> None:
        if not self.bootstrap_servers:
            raise ConfigError("no Kafka bootstrap servers configured (DRIFTLOOP_KAFKA_BOOTSTRAP)")
        sasl_complete = self.sasl_mechanism and self.sasl_username and self.sasl_password
        if self.uses_sasl and not sasl_complete:
            raise ConfigError(
                "SASL needs DRIFTLOOP_KAFKA_SASL_MECHANISM, _SASL_USERNAME and _SASL_PASSWORD",
                security_protocol=self.security_protocol,
            )

    def ssl_context(self) -> ssl.SSLContext | None:
        """An SSL context built from the ``ssl_*`` settings, or None without SSL."""
        if not self.uses_ssl:
            return None
        ctx = ssl.create_default_context(cafile=self.ssl_cafile)
        ctx.check_hostname = self.ssl_check_hostname
        if self.ssl_certfile:
            password = self.ssl_password.get_secret_value() if self.ssl_password else None
            ctx.load_cert_chain(self.ssl_certfile, self.ssl_keyfile, password)
        return ctx

    def kafka_python_options(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python's producer, consumer and admin clients."""
        self._check()
        opts: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
        }
        if self.uses_sasl:
            assert self.sasl_password is not None  # noqa: S101 - narrows a type that validation guarantees; guards no input
            opts |= {
                "sasl_mechanism": self.sasl_mechanism,
                "sasl_plain_username": self.sasl_username,
                "sasl_plain_password": self.sasl_password.get_secret_value(),
            }
        if self.uses_ssl:
            opts["ssl_context"] = self.ssl_context()
        return opts

    def consumer_group_options(self) -> dict[str, Any]:
        """Group membership timeouts for kafka-python consumers."""
        return {
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "max_poll_interval_ms": self.max_poll_interval_ms,
        }

    def describe(self) -> dict[str, Any]:
        """Settings safe to print or log: no secret appears."""
        return {
            "bootstrap": self.bootstrap,
            "security_protocol": self.security_protocol,
            "sasl_mechanism": self.sasl_mechanism,
            "sasl_username": self.sasl_username,
        }


class TopicsConfig(BaseSettings):
    """Topic names (one prefix for all of them) and how driftloop creates topics."""

    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_TOPIC_", frozen=True, extra="ignore")

    prefix: str = Field(default="", max_length=120, pattern=r"^[A-Za-z0-9._-]*$")
    partitions: int = Field(default=3, ge=1, le=1024)
    replication_factor: int = Field(default=1, ge=1, le=16)

    def name(self, key: str) -> str:
        """The full topic name for a contract key such as ``"feedback"``."""
        known = TOPIC_NAMES | INTERNAL_TOPIC_NAMES
        try:
            return self.prefix + known[key]
        except KeyError:
            raise ConfigError(f"unknown topic key {key!r}; known: {sorted(known)}") from None

    @property
    def inference_logs(self) -> str:
        return self.name("inference_logs")

    @property
    def feedback(self) -> str:
        return self.name("feedback")

    @property
    def training_examples(self) -> str:
        return self.name("training_examples")

    @property
    def checkpoint_events(self) -> str:
        return self.name("checkpoint_events")

    @property
    def version_events(self) -> str:
        return self.name("version_events")

    @property
    def dead_letters(self) -> str:
        return self.name("dead_letters")

    @property
    def verdicts(self) -> str:
        return self.name("verdicts")

    @property
    def shadow_scores(self) -> str:
        return self.name("shadow_scores")

    @property
    def join_repartition(self) -> str:
        """The joiner's repartition topic (internal, see :data:`INTERNAL_TOPIC_NAMES`)."""
        return self.name("join_repartition")

    def all_names(self) -> list[str]:
        """The contract's topics (not the internal ones)."""
        return [self.prefix + name for name in TOPIC_NAMES.values()]


class RedisConfig(BaseSettings):
    """How to reach Redis, and the one key prefix driftloop writes under.

    ``url`` empty means "no external Redis": the embedded stack starts one.
    ``rediss://`` URLs use TLS; ``username`` / ``password`` override those in
    the URL (ACL user and secret kept out of the URL and out of logs).
    """

    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_REDIS_", frozen=True, extra="ignore")

    # repr=False: a password written into the URL must not reach logs; describe() redacts it.
    url: str = Field(default="", repr=False)
    username: str | None = None
    password: SecretStr | None = None
    key_prefix: str = Field(default="driftloop:", max_length=120)
    ssl_ca_certs: str | None = None
    socket_timeout_s: float = Field(default=5.0, gt=0)

    @field_validator("url")
    @classmethod
    def _check_scheme(cls, url: str) -> str:
        if not url:
            return url
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018  # urlsplit checks the port only when asked
        except ValueError as exc:
            # Not the URL itself in the message: it may carry a password.
            raise ValueError(f"not a valid URL: {exc}") from None
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return url

    def key(self, model: str, name: str) -> str:
        """``{prefix}{model}:{name}``, e.g. ``driftloop:fraud:pointer``."""
        return f"{self.key_prefix}{model}:{name}"

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for ``redis.Redis.from_url(self.url, **options)``."""
        if not self.url:
            raise ConfigError("no Redis URL configured (DRIFTLOOP_REDIS_URL)")
        opts: dict[str, Any] = {"socket_timeout": self.socket_timeout_s, "decode_responses": True}
        if self.username:
            opts["username"] = self.username
        if self.password:
            opts["password"] = self.password.get_secret_value()
        if self.ssl_ca_certs and urlsplit(self.url).scheme == "rediss":
            opts["ssl_ca_certs"] = self.ssl_ca_certs
        return opts

    def describe(self) -> dict[str, Any]:
        """Settings safe to print or log: any password in the URL is masked."""
        return {
            "url": redact_url(self.url),
            "username": self.username,
            "key_prefix": self.key_prefix,
        }


def check_host_port(server: str) -> None:
    """Raise ValueError unless ``server`` is ``host``, ``host:port`` or ``[ipv6]:port``.

    The port, when given, must be 1-65535 (kafka-python defaults a missing one to 9092).
    """
    host, port = server, ""
    if server.startswith("["):
        host, bracket, rest = server[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"bootstrap server {server!r}: expected [ipv6]:port")
        port = rest[1:]
        if rest and not port:
            raise ValueError(f"bootstrap server {server!r}: empty port")
    elif server.count(":") == 1:
        host, _, port = server.partition(":")
        if not port:
            raise ValueError(f"bootstrap server {server!r}: empty port")
    if not host or any(c.isspace() or c in "/@?#" for c in host):
        raise ValueError(f"bootstrap server {server!r}: expected host:port")
    if port and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"bootstrap server {server!r}: port must be 1-65535")


#: Query parameters whose value is a credential, by name (case-insensitive, anywhere in
#: the name). redis-py passes every query parameter of a URL to the connection as a
#: keyword (``?password=``, ``?username=&password=``, ``?ssl_password=``); fsspec URLs
#: carry object-store keys and tokens the same way (``?key=&secret=&token=``, SAS ``sig``).
_SECRET_PARAM = re.compile(r"pass|pwd|secret|token|key|sig|credential|auth", re.IGNORECASE)
MASK = "***"


def redact_url(url: str) -> str:
    """``url`` safe to print: every credential it carries replaced by ``***``.

    Masked: the password of ``user:password@`` (the user name stays), and
    the value of every query parameter named like a credential (password,
    ``ssl_password``, ``secret``, ``token``, ``key``, ``sig``...). A password
    containing ``/`` or ``#`` ends the authority part early when parsed; when
    an ``@`` is left over after it, everything up to that ``@`` is masked. A
    URL that does not even parse is masked whole.
    """
    if not url:
        return url
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # a bad port raises here, not later
    except ValueError:
        return MASK
    netloc, path, fragment = parts.netloc, parts.path, parts.fragment
    user, at, host = netloc.rpartition("@")
    if at and ":" in user:
        netloc = f"{user.split(':', 1)[0]}:{MASK}@{host}"
    if "@" in path or "@" in fragment:
        # A password with "/" or "#" in it: urlsplit cut it into the path or fragment.
        return f"{parts.scheme}://{MASK}@{url.rpartition('@')[2]}" if parts.scheme else MASK
    query = "&".join(_redact_param(piece) for piece in parts.query.split("&"))
    # Rebuilt by hand: urlunsplit would drop the "//" of an empty host (unix:///run/r.sock).
    out = f"{parts.scheme}:" if parts.scheme else ""
    if url[len(out) :].startswith("//"):
        out += f"//{netloc}"
    out += path
    if "?" in url.partition("#")[0]:
        out += f"?{query}"
    return out + (f"#{fragment}" if "#" in url else "")


def _redact_param(piece: str) -> str:
    name, eq, value = piece.partition("=")
    if eq and value and _SECRET_PARAM.search(unquote_plus(name)):
        return f"{name}={MASK}"
    return piece
