"""The faust app factory every driftloop worker uses.

:func:`make_app` turns :class:`~services.config.KafkaConfig` (and optionally
:class:`~services.config.TopicsConfig`) into a configured ``faust.App``:

- brokers, client id and security: SASL (PLAIN / SCRAM, with or without TLS)
  as ``faust.SASLCredentials``, TLS alone as ``faust.SSLCredentials``;
- group timeouts: ``session_timeout_ms`` and ``heartbeat_interval_ms`` map
  to faust's ``broker_session_timeout`` and ``broker_heartbeat_interval``;
  ``max_poll_interval_ms`` to ``broker_rebalance_timeout`` (the time the
  broker gives members to rejoin, as kafka-python uses it). The embedded Tansu
  broker makes a group's first join wait for the rebalance timeout, so keep it
  short there (see ``services.stack.EMBEDDED_GROUP_TIMEOUTS``);
- ``broker_max_poll_interval`` is *not* that short value: in aiokafka it is a
  client-side idle timer, and a consumer that has not been asked for records
  for that long leaves the group. A faust worker does not ask while it joins
  and while it recovers tables after every rebalance, so with a few seconds
  each member of a two-worker group kept leaving (at generation 0 without
  even a LeaveGroup, leaving a ghost member behind that Tansu then elected
  leader) and re-joining, which made the other rebalance too: a livelock in
  which neither processed a record. It is at least faust's default, 1000 s
  (:data:`FAUST_MIN_MAX_POLL_INTERVAL_S`); a stuck agent is faust's own
  stall detection's business;
- the transport corrects faust's changelog highwaters, which Tansu's
  ``ListOffsets`` undercounts, with the Fetch high watermark
  (:mod:`streams.kafka_compat`; harmless on Apache Kafka);
- the table manager starts without faust's one-second nap (the apps declare
  their tables before they start: :class:`streams.kafka_compat.PromptTableManager`);
- the web server is off and the table store is ``memory://`` unless asked;
- the data directory is always explicit: faust would otherwise write
  ``<app id>-data`` into the current directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faust

from schemas import limits as L
from services.config import KafkaConfig, TopicsConfig
from streams import kafka_compat

#: The smallest client-side poll interval (seconds) a faust worker gets: faust's default.
FAUST_MIN_MAX_POLL_INTERVAL_S = 1000.0
#: How long a worker's producer lets a request gather records (faust's default: 0).
PRODUCER_LINGER_S = 0.005


def faust_credentials(kafka: KafkaConfig) -> faust.SASLCredentials | faust.SSLCredentials | None:
    """faust's credentials object for the security settings of ``kafka``, or None."""
    if kafka.uses_sasl:
        kafka.kafka_python_options()  # raises ConfigError when SASL settings are incomplete
        assert kafka.sasl_password is not None  # noqa: S101 - narrows a type that validation guarantees; guards no input
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value(),
            mechanism=kafka.sasl_mechanism,
            ssl_context=kafka.ssl_context(),  # None for SASL_PLAINTEXT
        )
    if kafka.uses_ssl:
        return faust.SSLCredentials(kafka.ssl_context())
    return None


def broker_urls(kafka: KafkaConfig) -> list[str]:
    """``kafka://host:port`` for every bootstrap server."""
    kafka.kafka_python_options()  # raises ConfigError without bootstrap servers
    return [f"kafka://{server}" for server in kafka.bootstrap_servers]


def faust_max_poll_interval(kafka: KafkaConfig) -> float:
    """faust's ``broker_max_poll_interval`` for ``kafka``: its
    ``max_poll_interval_ms`` but never below :data:`FAUST_MIN_MAX_POLL_INTERVAL_S`."""
    return max(kafka.max_poll_interval_ms / 1000, FAUST_MIN_MAX_POLL_INTERVAL_S)


def make_app(
    app_id: str,
    kafka: KafkaConfig,
    *,
    datadir: str | Path,
    topics: TopicsConfig | None = None,
    store: str = "memory://",
    web_enabled: bool = False,
    autodiscover: bool = False,
    **settings: Any,
) -> faust.App:
    """A faust app connected and tuned from driftloop settings.

    Parameters
    ----------
    app_id:
        The faust app id; also the consumer group id and the prefix of
        changelog topics, so it must be unique per logical worker.
    kafka:
        Brokers, security options and group timeouts.
    datadir:
        Where faust keeps local state (tables' stores). Required: without it
        faust writes into the current directory.
    topics:
        Partition count and replication factor for topics faust creates
        (changelogs, repartition topics). Default: ``TopicsConfig()``.
    store:
        Table store URL: ``memory://`` (changelog-backed tables rebuild from
        Kafka on start) or ``rocksdb://`` when installed.
    web_enabled:
        Run faust's web server (off: workers expose metrics elsewhere).
    settings:
        Any other faust setting; these win over the ones derived above.
    """
    topics = topics if topics is not None else TopicsConfig()
    derived: dict[str, Any] = {
        "broker": broker_urls(kafka),
        "broker_client_id": kafka.client_id,
        "broker_credentials": faust_credentials(kafka),
        "broker_session_timeout": kafka.session_timeout_ms / 1000,
        "broker_heartbeat_interval": kafka.heartbeat_interval_ms / 1000,
        "broker_max_poll_interval": faust_max_poll_interval(kafka),
        "broker_rebalance_timeout": kafka.max_poll_interval_ms / 1000,
        "broker_request_timeout": kafka.request_timeout_ms / 1000,
        "consumer_auto_offset_reset": "earliest",
        # Record sizes agree with the topics' max.message.bytes (schemas.limits):
        # send a dead letter of any size, fetch any record the topics admit.
        "producer_max_request_size": L.PRODUCER_MAX_REQUEST_BYTES,
        "consumer_max_fetch_size": L.CONSUMER_MAX_PARTITION_FETCH_BYTES,
        # Let a produce request gather what the agents send for a few ms: with
        # no linger each request carries the few records sent since the last
        # one's answer, and the socket writes cost more than the records.
        "producer_linger": PRODUCER_LINGER_S,
        "topic_partitions": topics.partitions,
        "topic_replication_factor": topics.replication_factor,
        "store": store,
        "datadir": str(datadir),
        "web_enabled": web_enabled,
        "autodiscover": autodiscover,
        # No one-second nap before the consumer subscribes (see kafka_compat).
        "TableManager": kafka_compat.PromptTableManager,
    }
    app = faust.App(app_id, **(derived | settings))
    kafka_compat.install(app)
    return app


def make_worker(app: faust.App, *, loglevel: str = "info") -> faust.Worker:
    """A ``faust.Worker`` for ``app`` without faust's terminal spinner.

    At log level warning or above faust draws a progress spinner from a log
    handler and, to feed it, sets the root logger to DEBUG: every debug call
    in faust and aiokafka then builds a log record (measured: about a third
    of the joiner agent's time). A service has no terminal to spin on.
    """
    worker = faust.Worker(app, loglevel=loglevel)
    worker.spinner = None
    return worker
