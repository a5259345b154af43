"""StackInfo: what the embedded stack hands to its users (no servers started)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest

from schemas.errors import StackError
from services.config import KafkaConfig, RedisConfig, TopicsConfig
from services.stack import EMBEDDED_GROUP_TIMEOUTS, EmbeddedStack, GroupTimeouts, StackInfo

SECRET = "pa55-w0rd"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("DRIFTLOOP_"):
            monkeypatch.delenv(key)


def _info(**overrides: Any) -> StackInfo:
    base = StackInfo(
        bootstrap="127.0.0.1:40001",
        redis_url="redis://127.0.0.1:40002/0",
        topics=TopicsConfig(prefix="demo.", partitions=2),
        key_prefix="dl:",
        group_timeouts=EMBEDDED_GROUP_TIMEOUTS,
        pids={"kafka": 11, "redis": 12},
    )
    return dataclasses.replace(base, **overrides)


def test_configs_from_info_point_at_the_stack_with_short_group_timeouts() -> None:
    info = _info()
    kafka = info.kafka_config()
    assert kafka.bootstrap_servers == ["127.0.0.1:40001"]
    assert kafka.consumer_group_options() == EMBEDDED_GROUP_TIMEOUTS.as_kafka_fields()
    assert info.kafka_config(client_id="worker-1").client_id == "worker-1"
    redis = info.redis_config()
    assert (redis.url, redis.key_prefix) == ("redis://127.0.0.1:40002/0", "dl:")


def test_security_settings_survive_into_the_configs_handed_out() -> None:
    base = KafkaConfig(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="svc",
        sasl_password=SECRET,
    )
    info = _info(kafka=base, redis=RedisConfig(password=SECRET))
    options = info.kafka_config().kafka_python_options()
    assert options["sasl_plain_password"] == SECRET
    assert info.redis_config().client_options()["password"] == SECRET
    assert SECRET not in repr(info)
    assert SECRET not in str(info.describe())


def test_env_lines_rebuild_the_same_settings_in_another_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    info = _info()
    for key, value in info.env().items():
        monkeypatch.setenv(key, value)
    assert KafkaConfig() == info.kafka_config()
    assert RedisConfig() == info.redis_config()
    assert TopicsConfig() == info.topics


def test_describe_is_json_ready_and_lists_the_topics() -> None:
    details = _info().describe()
    assert details["topics"] == TopicsConfig(prefix="demo.").all_names()
    assert details["started_by_us"] is True
    assert details["pids"] == {"kafka": 11, "redis": 12}
    assert _info(pids={}).describe()["started_by_us"] is False


def test_describe_masks_a_password_in_the_redis_url() -> None:
    details = _info(redis_url=f"redis://:{SECRET}@r:6379/0").describe()
    assert SECRET not in str(details)


def test_group_timeouts_read_back_from_a_kafka_config() -> None:
    config = KafkaConfig(
        session_timeout_ms=9000, heartbeat_interval_ms=2000, max_poll_interval_ms=7000
    )
    assert GroupTimeouts.of(config) == GroupTimeouts(9000, 2000, 7000)
    # Embedded defaults work on Apache Kafka too (group.min.session.timeout.ms = 6000).
    assert EMBEDDED_GROUP_TIMEOUTS.session_timeout_ms >= 6000
    assert (
        EMBEDDED_GROUP_TIMEOUTS.heartbeat_interval_ms * 3
        <= EMBEDDED_GROUP_TIMEOUTS.session_timeout_ms
    )


def test_info_before_start_is_a_stack_error() -> None:
    with pytest.raises(StackError, match="not running"):
        _ = EmbeddedStack().info
