"""streams.app.make_app: KafkaConfig and TopicsConfig become faust settings."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

import faust
import pytest

from schemas.errors import ConfigError
from services.config import KafkaConfig, TopicsConfig
from streams.app import FAUST_MIN_MAX_POLL_INTERVAL_S, faust_credentials, make_app, make_worker
from streams.kafka_compat import HighwaterConsumer, HighwaterTransport

SHORT: dict[str, Any] = {
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 1000,
    "max_poll_interval_ms": 4000,
}


def test_app_takes_brokers_timeouts_and_topic_settings(tmp_path: Path) -> None:
    kafka = KafkaConfig(bootstrap="a:9092,b:9092", client_id="worker-7", **SHORT)
    app = make_app("joiner", kafka, datadir=tmp_path, topics=TopicsConfig(partitions=6))
    conf = app.conf
    assert [str(url) for url in conf.broker] == ["kafka://a:9092", "kafka://b:9092"]
    assert conf.broker_client_id == "worker-7"
    assert conf.broker_session_timeout == 6.0
    assert conf.broker_heartbeat_interval == 1.0
    assert conf.broker_rebalance_timeout == 4.0
    # not 4 s: aiokafka leaves the group after that long without a fetch,
    # which a faust worker recovering its tables routinely exceeds
    assert conf.broker_max_poll_interval == FAUST_MIN_MAX_POLL_INTERVAL_S
    assert conf.topic_partitions == 6
    assert conf.web_enabled is False
    assert str(conf.store) == "memory:"
    assert Path(conf.datadir) == tmp_path


def test_store_web_and_any_setting_can_be_overridden(tmp_path: Path) -> None:
    kafka = KafkaConfig(bootstrap="a:9092")
    app = make_app(
        "trainer", kafka, datadir=tmp_path, store="rocksdb://", web_enabled=True, web_port=6066
    )
    assert str(app.conf.store) == "rocksdb:"
    assert app.conf.web_enabled is True
    assert app.conf.web_port == 6066


def test_no_credentials_without_security() -> None:
    assert faust_credentials(KafkaConfig(bootstrap="a:9092")) is None


def test_sasl_over_tls_becomes_sasl_credentials_with_an_ssl_context(tmp_path: Path) -> None:
    kafka = KafkaConfig(
        bootstrap="a:9093",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="svc",
        sasl_password="pw",
    )
    credentials = faust_credentials(kafka)
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.username, credentials.password) == ("svc", "pw")
    assert credentials.mechanism.value == "SCRAM-SHA-256"
    assert isinstance(credentials.ssl_context, ssl.SSLContext)
    assert credentials.protocol.value == "SASL_SSL"
    app = make_app("secure", kafka, datadir=tmp_path)
    assert isinstance(app.conf.broker_credentials, faust.SASLCredentials)
    assert app.conf.broker_credentials.username == "svc"


def test_sasl_without_tls_has_no_ssl_context() -> None:
    kafka = KafkaConfig(
        bootstrap="a:9092",
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="svc",
        sasl_password="pw",
    )
    credentials = faust_credentials(kafka)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.ssl_context is None
    assert credentials.protocol.value == "SASL_PLAINTEXT"


def test_tls_alone_becomes_ssl_credentials() -> None:
    kafka = KafkaConfig(bootstrap="a:9093", security_protocol="SSL", ssl_check_hostname=False)
    credentials = faust_credentials(kafka)
    assert isinstance(credentials, faust.SSLCredentials)
    assert credentials.context.check_hostname is False


def test_incomplete_settings_fail_before_faust_starts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="bootstrap"):
        make_app("x", KafkaConfig(), datadir=tmp_path)
    with pytest.raises(ConfigError, match="SASL"):
        faust_credentials(KafkaConfig(bootstrap="a:1", security_protocol="SASL_SSL"))


def test_a_long_configured_poll_interval_is_kept(tmp_path: Path) -> None:
    kafka = KafkaConfig(bootstrap="a:9092", max_poll_interval_ms=3_600_000)
    app = make_app("slow", kafka, datadir=tmp_path)
    assert app.conf.broker_max_poll_interval == 3600.0
    assert app.conf.broker_rebalance_timeout == 3600.0


def test_kafka_apps_get_the_highwater_correcting_transport(tmp_path: Path) -> None:
    app = make_app("joiner", KafkaConfig(bootstrap="a:9092"), datadir=tmp_path)
    assert isinstance(app.transport, HighwaterTransport)
    assert app.transport.Consumer is HighwaterConsumer


def test_workers_leave_the_root_logger_level_alone_at_warning(tmp_path: Path) -> None:
    """faust's terminal spinner would set the root logger to DEBUG at level
    warning, so every debug call in faust and aiokafka built a record."""
    app = make_app("t", KafkaConfig(bootstrap="a:9092"), datadir=tmp_path)
    worker = make_worker(app, loglevel="warning")
    assert worker.spinner is None
    logger = logging.getLogger("driftloop-test-root")
    logger.addHandler(logging.NullHandler())
    logger.setLevel(logging.WARNING)
    worker.on_setup_root_logger(logger, logging.WARNING)
    assert logger.level == logging.WARNING
    assert len(logger.handlers) == 1


def test_faust_sends_and_fetches_records_as_large_as_the_topics_admit(tmp_path: Path) -> None:
    """faust's defaults (1 MiB) refused a 2.8 MB dead letter and crashed the
    joiner agent (issue 9, item 3); they now follow schemas.limits."""
    from schemas import limits as L

    app = make_app("joiner", KafkaConfig(bootstrap="a:9092"), datadir=tmp_path)
    assert app.conf.producer_max_request_size == L.PRODUCER_MAX_REQUEST_BYTES
    assert app.conf.consumer_max_fetch_size == L.CONSUMER_MAX_PARTITION_FETCH_BYTES
    assert L.PRODUCER_MAX_REQUEST_BYTES >= L.TOPIC_MAX_MESSAGE_BYTES
