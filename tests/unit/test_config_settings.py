"""services.config: environment, immutability, secrets and client options."""

from __future__ import annotations

import os
import ssl

import pydantic
import pytest

from schemas.errors import ConfigError
from services.config import KafkaConfig, RedisConfig, TopicsConfig, redact_url

SECRET = "s3cr3t-pa55"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("DRIFTLOOP_"):
            monkeypatch.delenv(key)


def test_settings_come_from_driftloop_prefixed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRIFTLOOP_KAFKA_BOOTSTRAP", "a:9092, b:9092")
    monkeypatch.setenv("DRIFTLOOP_KAFKA_MAX_POLL_INTERVAL_MS", "4000")
    monkeypatch.setenv("DRIFTLOOP_TOPIC_PREFIX", "prod.")
    monkeypatch.setenv("DRIFTLOOP_TOPIC_PARTITIONS", "12")
    monkeypatch.setenv("DRIFTLOOP_REDIS_URL", "redis://r:6379/1")
    monkeypatch.setenv("DRIFTLOOP_REDIS_KEY_PREFIX", "dl:")
    monkeypatch.setenv("KAFKA_BOOTSTRAP", "unprefixed:1")  # ignored

    kafka, topics, redis = KafkaConfig(), TopicsConfig(), RedisConfig()

    assert kafka.bootstrap_servers == ["a:9092", "b:9092"]
    assert kafka.max_poll_interval_ms == 4000
    assert topics.feedback == "prod.feedback"
    assert topics.partitions == 12
    assert topics.all_names()[0] == "prod.inference-logs"
    assert redis.key("fraud", "pointer") == "dl:fraud:pointer"


def test_defaults_name_the_contract_topics_and_key_prefix() -> None:
    topics = TopicsConfig()
    assert topics.all_names() == [
        "inference-logs", "feedback", "training-examples",
        "checkpoint-events", "version-events", "dead-letters", "verdicts",
        "shadow-scores",
    ]  # fmt: skip
    assert RedisConfig().key("m", "versions") == "driftloop:m:versions"
    with pytest.raises(ConfigError, match="unknown topic key"):
        topics.name("feedbacks")


@pytest.mark.parametrize(
    ("model", "field", "value"),
    [
        (KafkaConfig, "bootstrap", "x:1"),
        (TopicsConfig, "prefix", "x."),
        (RedisConfig, "url", "redis://x"),
    ],
)
def test_settings_are_frozen(model: type[pydantic.BaseModel], field: str, value: str) -> None:
    config = model()
    with pytest.raises(pydantic.ValidationError):
        setattr(config, field, value)


def test_bad_values_are_rejected() -> None:
    with pytest.raises(pydantic.ValidationError):
        TopicsConfig(prefix="has space")
    with pytest.raises(pydantic.ValidationError):
        TopicsConfig(partitions=0)
    with pytest.raises(pydantic.ValidationError):
        RedisConfig(url="http://not-redis")
    with pytest.raises(pydantic.ValidationError):
        KafkaConfig(security_protocol="SASL_WHATEVER")


def _sasl(**extra: object) -> KafkaConfig:
    return KafkaConfig(
        bootstrap="k:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password=SECRET,
        **extra,  # type: ignore[arg-type]
    )


def test_secrets_never_appear_in_repr_str_or_describe() -> None:
    kafka = _sasl(ssl_password=SECRET)
    redis = RedisConfig(url="redis://r:6379/0", username="app", password=SECRET)
    for text in (
        repr(kafka),
        str(kafka),
        str(kafka.describe()),
        repr(redis),
        str(redis.describe()),
    ):
        assert SECRET not in text
    assert kafka.describe()["sasl_username"] == "svc"
    assert redis.describe()["username"] == "app"


def test_a_password_inside_the_redis_url_is_masked_in_describe() -> None:
    redis = RedisConfig(url=f"redis://user:{SECRET}@r:6379/0")
    assert redis.describe()["url"] == "redis://user:***@r:6379/0"


def test_a_password_inside_the_redis_url_is_not_in_repr() -> None:
    redis = RedisConfig(url=f"redis://user:{SECRET}@r:6379/0")
    assert SECRET not in repr(redis)


def test_kafka_python_options_carry_sasl_and_ssl() -> None:
    options = _sasl().kafka_python_options()
    assert options["bootstrap_servers"] == ["k:9093"]
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "svc"
    assert options["sasl_plain_password"] == SECRET
    assert isinstance(options["ssl_context"], ssl.SSLContext)


def test_kafka_python_options_without_security_have_no_credentials() -> None:
    options = KafkaConfig(bootstrap="k:9092").kafka_python_options()
    assert options["security_protocol"] == "PLAINTEXT"
    assert not {"sasl_mechanism", "sasl_plain_password", "ssl_context"} & set(options)


def test_ssl_without_sasl_builds_a_context_with_the_hostname_setting() -> None:
    config = KafkaConfig(bootstrap="k:9093", security_protocol="SSL", ssl_check_hostname=False)
    context = config.kafka_python_options()["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname is False
    assert "sasl_mechanism" not in config.kafka_python_options()


def test_incomplete_kafka_settings_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="bootstrap"):
        KafkaConfig().kafka_python_options()
    with pytest.raises(ConfigError, match="SASL") as caught:
        KafkaConfig(bootstrap="k:1", security_protocol="SASL_PLAINTEXT").kafka_python_options()
    assert caught.value.context["security_protocol"] == "SASL_PLAINTEXT"


def test_redis_client_options() -> None:
    with pytest.raises(ConfigError):
        RedisConfig().client_options()
    plain = RedisConfig(url="redis://r:6379/0").client_options()
    assert "password" not in plain
    assert plain["decode_responses"] is True
    tls = RedisConfig(
        url="rediss://r:6380/0", username="app", password=SECRET, ssl_ca_certs="/ca.pem"
    ).client_options()
    assert (tls["username"], tls["password"], tls["ssl_ca_certs"]) == ("app", SECRET, "/ca.pem")
    no_tls = RedisConfig(url="redis://r:6379/0", ssl_ca_certs="/ca.pem").client_options()
    assert "ssl_ca_certs" not in no_tls


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("redis://r:6379/0", "redis://r:6379/0"),
        (f"redis://:{SECRET}@r:6379/0", "redis://:***@r:6379/0"),
        (f"rediss://app:{SECRET}@r.example.com/2?x=1", "rediss://app:***@r.example.com/2?x=1"),
        ("", ""),
    ],
)
def test_redact_url_masks_only_the_password(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted
