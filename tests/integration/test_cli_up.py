"""``driftloop up`` as a user runs it: a foreground process printing how to connect."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest
import redis

from services.config import KafkaConfig
from services.kafka import make_admin, make_consumer, make_producer

REPO = Path(__file__).resolve().parents[2]


def _own_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOOP_")}
    env["PYTHONPATH"] = str(REPO)
    return env


def _start_up(*args: str, stderr: IO[str] | int = subprocess.PIPE) -> subprocess.Popen[str]:
    """``driftloop up`` with ``args``; ``stderr`` a file for a long run (a pipe nobody
    reads fills with the process's log lines and blocks it)."""
    return subprocess.Popen(
        [sys.executable, "-c", "from services.cli import main; main()", *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=_own_env(),
        cwd=REPO,
        text=True,
    )


def _tail(log: IO[str]) -> str:
    log.flush()
    log.seek(0)
    return log.read()[-4000:]


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_up_prints_json_serves_clients_and_stops_on_signal(
    stop_signal: signal.Signals, wait_until_gone: Callable[[list[int]], list[int]]
) -> None:
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed on every path below
    proc = _start_up("up", "--json", "--topic-prefix", "cli.", "--partitions", "2", stderr=log)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, _tail(log)
        details = json.loads(line)
        env = details["env"]
        assert env["DRIFTLOOP_KAFKA_BOOTSTRAP"] == details["bootstrap"]
        assert env["DRIFTLOOP_REDIS_URL"] == details["redis_url"]
        assert details["topic_prefix"] == "cli."
        assert details["key_prefix"] == "driftloop:"
        pids = list(details["pids"].values())
        assert len(pids) == 2

        # Plain clients connect with nothing but the printed settings.
        kafka = KafkaConfig(bootstrap=env["DRIFTLOOP_KAFKA_BOOTSTRAP"])
        admin = make_admin(kafka)
        partitions = {t["name"]: len(t["partitions"]) for t in admin.describe_topics()}
        admin.close()
        assert partitions["cli.feedback"] == 2
        assert set(details["topics"]) <= set(partitions)
        producer = make_producer(kafka)
        producer.send("cli.feedback", b"hello").get(timeout=30)
        producer.close()
        consumer = make_consumer(kafka, "cli.feedback", consumer_timeout_ms=30_000)
        assert next(iter(consumer)).value == b"hello"
        consumer.close()
        client = redis.Redis.from_url(env["DRIFTLOOP_REDIS_URL"])
        assert client.ping()
        client.close()
    except BaseException:
        # the failure above is the one to report, not how the process then stopped
        proc.kill()
        proc.wait()
        log.close()
        raise
    proc.send_signal(stop_signal)
    try:
        code = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"`driftloop up` did not stop on {stop_signal.name}:\n{_tail(log)}")
    finally:
        tail = _tail(log)
        log.close()
    assert code == 0, tail
    # `up` waits for its children before exiting: nothing is left to wait for.
    assert wait_until_gone(pids) == []


def test_up_rejects_a_bad_topic_prefix() -> None:
    proc = _start_up("up", "--topic-prefix", "no spaces allowed")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "prefix" in err
