"""Every credential form redis-py and the fsspec cold tier accept stays out of printed settings.

Guards issue 8 item 7: ``driftloop up --json`` printed a Redis URL with
``?password=...`` unmasked (``redact_url`` only knew ``user:password@``), and a
Redis URL pydantic refused was echoed, password included, in the traceback.
redis-py hands *every* query parameter of a URL to the connection as a
keyword (``redis.connection.parse_url``), so ``?password=``, ``?username=&password=``
and ``?ssl_password=`` (the client key's passphrase) all authenticate.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import redis.connection

from services.config import KafkaConfig, RedisConfig, TopicsConfig, redact_url
from services.stack import EMBEDDED_GROUP_TIMEOUTS, StackInfo

SECRET = "s3cr3t-pa55"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("DRIFTLOOP_"):
            monkeypatch.delenv(key)


# (url, what must still be readable in the redacted form)
FORMS = [
    (f"redis://:{SECRET}@r:6379/0", "redis://:***@r:6379/0"),
    (f"redis://app:{SECRET}@r:6379/0", "redis://app:***@r:6379/0"),
    (f"redis://r:6379/0?password={SECRET}", "redis://r:6379/0?password=***"),
    (
        f"redis://r/0?username=app&password={SECRET}&db=2",
        "redis://r/0?username=app&password=***&db=2",
    ),
    (f"rediss://r:6380?ssl_password={SECRET}", "rediss://r:6380?ssl_password=***"),
    (
        f"rediss://r:6380?ssl_check_hostname=true&PASSWORD={SECRET}",
        "rediss://r:6380?ssl_check_hostname=true&PASSWORD=***",
    ),
    (f"redis://r?pass%77ord={SECRET}", "redis://r?pass%77ord=***"),
    (f"unix://:{SECRET}@/run/redis.sock?db=1", "unix://:***@/run/redis.sock?db=1"),
    (f"unix:///run/redis.sock?password={SECRET}", "unix:///run/redis.sock?password=***"),
    (f"redis://:{SECRET}@[::1]:6379/0", "redis://:***@[::1]:6379/0"),
    (
        f"s3://bucket/cold?key=AKIA1&secret={SECRET}&token={SECRET}",
        "s3://bucket/cold?key=***&secret=***&token=***",
    ),
    (f"ftp://ops:{SECRET}@archive.example.com/cold", "ftp://ops:***@archive.example.com/cold"),
]


@pytest.mark.parametrize(("url", "redacted"), FORMS)
def test_each_credential_form_is_masked(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted
    assert SECRET not in redact_url(url)


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:12/{SECRET}@r:6379/0",  # "/" in the password: urlsplit ends the host early
        f"redis://:{SECRET}#x@r:6379/0",  # "#" in the password
        f"redis://:{SECRET}@r:99999/0",  # a port urlsplit refuses
        f"redis://[::1:{SECRET}@r",  # does not parse at all
    ],
)
def test_a_url_that_parses_oddly_is_masked_rather_than_leaked(url: str) -> None:
    assert SECRET not in redact_url(url)


def test_the_query_forms_are_credentials_to_redis_py() -> None:
    """What the masked forms mean to the client: each one is a secret it sends."""
    parsed = redis.connection.parse_url(
        f"rediss://r?username=app&password={SECRET}&ssl_password={SECRET}"
    )
    assert parsed["password"] == SECRET
    assert parsed["ssl_password"] == SECRET


@pytest.mark.parametrize(("url", "redacted"), FORMS[:8])
def test_up_json_prints_no_redis_credential(url: str, redacted: str) -> None:
    """What ``driftloop up --json`` prints: ``describe()``, both the URL and the env lines."""
    info = StackInfo(
        bootstrap="127.0.0.1:40001",
        redis_url=url,
        topics=TopicsConfig(),
        key_prefix="dl:",
        group_timeouts=EMBEDDED_GROUP_TIMEOUTS,
    )
    details = info.describe()
    assert SECRET not in str(details)
    assert details["redis_url"] == redacted
    assert details["env"]["DRIFTLOOP_REDIS_URL"] == redacted
    assert (
        dataclasses.replace(info).env()["DRIFTLOOP_REDIS_URL"] == url
    )  # the real one, for clients


def test_redis_describe_masks_the_query_password() -> None:
    config = RedisConfig(url=f"redis://r:6379/0?password={SECRET}")
    assert SECRET not in str(config.describe())
    assert SECRET not in repr(config)


def test_kafka_secrets_never_appear_in_repr_or_describe() -> None:
    config = KafkaConfig(
        bootstrap="k:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username="app",
        sasl_password=SECRET,
        ssl_password=SECRET,
    )
    assert SECRET not in repr(config) + str(config) + str(config.describe())
    assert config.kafka_python_options()["sasl_plain_password"] == SECRET
