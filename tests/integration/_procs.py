"""Helpers for integration tests that run ``driftloop worker`` as real processes.

- :func:`worker_env`: the environment that points a worker subprocess at a
  test's sandbox (short group timeouts, its topic prefix, its own app id).
- :class:`WorkerProcess`: one ``driftloop worker --role ...`` subprocess with
  its output in a log file; wait for a line, kill -9, or stop it with SIGTERM.
- :func:`produce`, :func:`read_topic`, :func:`committed_offsets`: the
  Kafka side, through the project's kafka-python clients.
- :func:`manifests` / :func:`newest`: committed checkpoints of a model, read
  straight from the store directory (``manifest.json`` is written last).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from schemas.manifest import CheckpointManifest, decode_manifest
from services.kafka import make_admin, make_consumer, make_producer

if TYPE_CHECKING:
    from tests.integration.conftest import Sandbox

#: ``driftloop worker`` with this interpreter and source tree.
WORKER = [sys.executable, "-c", "from services.cli import main; main()", "worker"]


def worker_env(
    sandbox: Sandbox,
    *,
    app_id: str,
    store: Path | None = None,
    commit_interval_s: float | None = None,
    **extra: str,
) -> dict[str, str]:
    """Environment for a worker subprocess on ``sandbox`` in consumer group ``app_id``.

    Group timeouts are short: Tansu makes every join wait about half the
    session timeout, and a killed member holds its partitions until its
    session expires. ``extra`` adds variables as given (``DRIFTLOOP_JOIN_*`` ...).
    """
    env = dict(os.environ)
    env.update(sandbox.stack.env())
    env.update(
        {
            "DRIFTLOOP_KAFKA_BOOTSTRAP": sandbox.kafka.bootstrap,
            "DRIFTLOOP_KAFKA_SESSION_TIMEOUT_MS": "2000",
            "DRIFTLOOP_KAFKA_HEARTBEAT_INTERVAL_MS": "300",
            "DRIFTLOOP_KAFKA_MAX_POLL_INTERVAL_MS": "1000",
            "DRIFTLOOP_TOPIC_PREFIX": sandbox.topics.prefix,
            "DRIFTLOOP_TOPIC_PARTITIONS": str(sandbox.topics.partitions),
            "DRIFTLOOP_WORKER_APP_ID": app_id,
        }
    )
    if store is not None:
        env["DRIFTLOOP_STORE_ROOT"] = str(store)
        env["DRIFTLOOP_STORE_KEEP_LATEST"] = "100000"
    if commit_interval_s is not None:
        env["DRIFTLOOP_WORKER_COMMIT_INTERVAL_S"] = str(commit_interval_s)
    env.update(extra)
    return env


class WorkerProcess:
    """A ``driftloop worker --role <role>`` subprocess appending its output to ``log``.

    Several processes may share one log (restarts of the same worker); each
    reads only what was written after it started.
    """

    def __init__(
        self,
        role: str,
        env: dict[str, str],
        log: Path,
        *,
        config: Path | None = None,
    ) -> None:
        self.role = role
        self.log = log
        self._out = log.open("ab")
        self._start = log.stat().st_size
        argv = [*WORKER, "--role", role]
        if config is not None:
            argv += ["--config", str(config)]
        self.proc = subprocess.Popen(argv, env=env, stdout=self._out, stderr=subprocess.STDOUT)

    def text(self) -> str:
        """What this process has written so far."""
        with self.log.open("rb") as f:
            f.seek(self._start)
            return f.read().decode(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for(self, marker: str, timeout_s: float = 90.0) -> bool:
        """Until ``marker`` appears in the output: True; False if the process died first.

        Raises AssertionError (with the output's tail) when neither happens in time.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if marker in self.text():
                return True
            if not self.alive():
                return marker in self.text()
            time.sleep(0.05)
        raise AssertionError(f"{self.role} never wrote {marker!r}:\n{self.text()[-3000:]}")

    def kill(self) -> None:
        """kill -9, and reap."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._out.close()

    def terminate(self) -> int:
        """SIGTERM (the trainer takes its shutdown checkpoints); the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self._out.close()
        return code


def produce(sandbox: Sandbox, topic: str, records: Iterable[tuple[bytes, bytes]]) -> None:
    """Write ``(key, value)`` records to ``topic`` in order, and flush."""
    producer = make_producer(sandbox.kafka, linger_ms=5)
    for key, value in records:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


def read_topic(sandbox: Sandbox, topic: str, count: int, timeout_s: float = 60.0) -> list[bytes]:
    """The values of the first ``count`` records of ``topic`` (all partitions, no group)."""
    consumer = make_consumer(sandbox.kafka, topic)
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(values) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=300).values():
                values.extend(r.value for r in batch)
    finally:
        consumer.close(autocommit=False)
    if len(values) < count:
        raise AssertionError(f"read {len(values)} of {count} records of {topic}")
    return values


def committed_offsets(sandbox: Sandbox, group: str, topic: str) -> dict[int, int]:
    """The offsets consumer group ``group`` has committed on ``topic``, by partition."""
    admin = make_admin(sandbox.kafka)
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


def wait_committed(
    sandbox: Sandbox,
    group: str,
    targets: dict[str, dict[int, int]],
    proc: WorkerProcess,
    timeout_s: float = 90.0,
) -> None:
    """Until ``group`` has committed at least ``targets`` ({topic: {partition: offset}}).

    A worker commits input offsets only after flushing what it produced for
    them, so this means its output for that input is in Kafka.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        behind = False
        for topic, parts in targets.items():
            done = committed_offsets(sandbox, group, topic)
            behind |= any(done.get(p, 0) < want for p, want in parts.items())
        if not behind:
            return
        assert proc.alive(), proc.text()[-3000:]
        time.sleep(0.3)
    raise AssertionError(f"group {group} did not commit {targets}:\n{proc.text()[-3000:]}")


def manifests(store: Path, model: str) -> list[CheckpointManifest]:
    """Committed manifests of ``model`` (``manifest.json`` is written last), oldest first."""
    found = [decode_manifest(path.read_bytes()) for path in (store / model).glob("*/manifest.json")]
    return sorted(found, key=lambda m: m.seq)


def newest(store: Path, model: str) -> CheckpointManifest | None:
    """The newest committed manifest of ``model``, or None."""
    found = manifests(store, model)
    return found[-1] if found else None
