"""The one way integration tests get a real broker and a real Redis.

- ``stack`` (session): the embedded stack (Tansu + Redis) started once for
  the whole run, or the servers named by ``DRIFTLOOP_KAFKA_BOOTSTRAP`` /
  ``DRIFTLOOP_REDIS_URL`` when set (then nothing is started).
- ``sandbox`` (per test): a fresh topic prefix with the contract's topics
  created, a fresh consumer group id and Redis key prefix, and ready
  ``KafkaConfig`` / ``TopicsConfig`` / ``RedisConfig`` objects. Its Kafka
  config carries short group timeouts: Tansu makes a group's first join wait
  for the full rebalance timeout (``max_poll_interval_ms``).
- ``wait_until_gone``: poll until processes have exited (for tests about
  child servers not outliving their parent).
- ``redis_client``: a redis-py client for the sandbox; the sandbox's keys are
  deleted after the test.

Every test in this directory is marked ``integration``.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from services.config import KafkaConfig, RedisConfig, TopicsConfig
from services.kafka import ensure_topics
from services.stack import EMBEDDED_GROUP_TIMEOUTS, EmbeddedStack, StackInfo
from tests.integration._procs import WorkerProcess
from tests.integration._serving import Server, Versions, train_versions


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def stack() -> Iterator[StackInfo]:
    """The running stack for this test session (stopped at the end, even on failure)."""
    with EmbeddedStack(create_topics=False) as info:
        yield info


@dataclass(frozen=True)
class Sandbox:
    """One test's private corner of the shared stack.

    Attributes
    ----------
    name:
        A short unique token; also usable for faust app ids and file names.
    topics:
        Unique prefix; the contract's topics exist with ``topics.partitions``.
    kafka:
        Bootstrap of the stack and short group timeouts (works on Tansu and
        Apache Kafka alike).
    redis:
        URL of the stack and a unique key prefix.
    group_id:
        A consumer group no other test uses.
    """

    name: str
    stack: StackInfo
    topics: TopicsConfig
    kafka: KafkaConfig
    redis: RedisConfig
    group_id: str

    def topic(self, suffix: str, *, partitions: int | None = None) -> str:
        """Create (idempotently) and return the extra topic ``<prefix><suffix>``."""
        name = self.topics.prefix + suffix
        settings = self.topics
        if partitions is not None:
            settings = self.topics.model_copy(update={"partitions": partitions})
        ensure_topics(self.kafka, [name], settings)
        return name


@pytest.fixture
def sandbox(stack: StackInfo) -> Sandbox:
    """A fresh topic prefix (topics created), group id and Redis key prefix."""
    name = uuid.uuid4().hex[:10]
    topics = TopicsConfig(prefix=f"t{name}.", partitions=3)
    kafka = stack.kafka_config(
        client_id=f"test-{name}", **EMBEDDED_GROUP_TIMEOUTS.as_kafka_fields()
    )
    ensure_topics(kafka, topics.all_names(), topics)
    return Sandbox(
        name=name,
        stack=stack,
        topics=topics,
        kafka=kafka,
        redis=stack.redis_config(key_prefix=f"test:{name}:"),
        group_id=f"group-{name}",
    )


@pytest.fixture
def redis_client(sandbox: Sandbox) -> Iterator[redis.Redis[str]]:
    """A client for the stack's Redis; keys under the sandbox prefix are removed afterwards."""
    client = redis.Redis.from_url(sandbox.redis.url, **sandbox.redis.client_options())
    try:
        yield client
    finally:
        keys = list(client.scan_iter(match=f"{sandbox.redis.key_prefix}*", count=500))
        if keys:
            client.delete(*keys)
        client.close()


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (exited, or a zombie awaiting its reaper)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


@pytest.fixture
def wait_until_gone() -> Callable[[list[int]], list[int]]:
    """``wait(pids)`` polls (deadline 60 s) until all exited; returns those still running.

    A generous wait, not a timing assertion: the test asserts the result is empty.
    """

    def wait(pids: list[int]) -> list[int]:
        deadline = time.monotonic() + 60.0
        alive = [pid for pid in pids if not process_gone(pid)]
        while alive and time.monotonic() < deadline:
            time.sleep(0.2)
            alive = [pid for pid in alive if not process_gone(pid)]
        return alive

    return wait


@pytest.fixture
def started() -> Iterator[list[WorkerProcess]]:
    """The worker processes a test starts; any still running is killed afterwards."""
    procs: list[WorkerProcess] = []
    yield procs
    for proc in procs:
        if proc.alive():
            proc.kill()


@pytest.fixture
def versions(tmp_path: Path) -> Versions:
    """Three checkpoint versions of the serving tests' model, trained into a fresh store."""
    return train_versions(tmp_path / "store")


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """``driftloop serve`` processes a test started, stopped at its end."""
    started: list[Server] = []
    yield started
    for s in started:
        s.stop()
