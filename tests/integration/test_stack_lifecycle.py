"""The embedded stack as a user meets it: start, reuse, failures, and no orphans."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from schemas.errors import StackError
from services.config import KafkaConfig, RedisConfig, TopicsConfig
from services.kafka import make_admin
from services.stack import EmbeddedStack, StackInfo
from services.stack import embedded as embedded_module
from services.stack.probes import kafka_metadata, redis_ping
from services.stack.process import free_port as real_free_port

#: The ``wait_until_gone`` fixture: wait(pids) -> pids still running at the deadline.
WaitGone = Callable[[list[int]], list[int]]

REPO = Path(__file__).resolve().parents[2]


def own_env() -> dict[str, str]:
    """The environment minus any external servers, so a child starts its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOOP_")}
    env["PYTHONPATH"] = str(REPO)
    return env


@pytest.fixture
def fresh_stack() -> Iterator[EmbeddedStack]:
    stack = EmbeddedStack(KafkaConfig(bootstrap=""), RedisConfig(url=""), create_topics=False)
    try:
        yield stack
    finally:
        stack.stop()


def test_started_servers_answer_and_stop_with_the_stack(
    fresh_stack: EmbeddedStack, wait_until_gone: WaitGone
) -> None:
    info = fresh_stack.start()
    assert info.started_by_us
    assert set(info.pids) == {"kafka", "redis"}
    host, port = info.bootstrap.split(":")
    assert kafka_metadata(host, int(port))[0][1:] == (host, int(port))
    client = redis.Redis.from_url(info.redis_url, decode_responses=True)
    assert client.ping()
    assert client.config_get("save") == {"save": ""}
    assert client.config_get("appendonly") == {"appendonly": "no"}
    client.close()

    fresh_stack.stop()
    assert wait_until_gone(list(info.pids.values())) == []
    with pytest.raises(StackError):
        _ = fresh_stack.info


def test_topics_of_the_contract_are_created(stack: StackInfo) -> None:
    topics = TopicsConfig(prefix="contract-check.", partitions=2)
    with EmbeddedStack(stack.kafka_config(), stack.redis_config(), topics) as info:
        assert not info.started_by_us
        assert info.pids == {}
        admin = make_admin(info.kafka_config())
        described = {t["name"]: len(t["partitions"]) for t in admin.describe_topics()}
        admin.close()
    assert {name: described.get(name) for name in topics.all_names()} == dict.fromkeys(
        topics.all_names(), 2
    )


def test_external_servers_from_the_environment_are_used_not_started(
    stack: StackInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRIFTLOOP_KAFKA_BOOTSTRAP", stack.bootstrap)
    monkeypatch.setenv("DRIFTLOOP_REDIS_URL", stack.redis_url)
    monkeypatch.setenv("DRIFTLOOP_KAFKA_MAX_POLL_INTERVAL_MS", "5000")
    with EmbeddedStack(create_topics=False) as info:
        assert (info.bootstrap, info.redis_url, info.pids) == (stack.bootstrap, stack.redis_url, {})
        assert info.kafka_config().max_poll_interval_ms == 5000


def test_unreachable_external_redis_is_a_clear_error(stack: StackInfo) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    bad = RedisConfig(url=f"redis://:hunter2@127.0.0.1:{port}/0", socket_timeout_s=1)
    with pytest.raises(StackError, match="did not answer PING") as caught:
        EmbeddedStack(stack.kafka_config(), bad, create_topics=False).start()
    assert "hunter2" not in str(caught.value)
    assert str(port) in str(caught.value)


def _fake_server(tmp_path: Path, body: str) -> str:
    script = tmp_path / "fake-server"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


def test_a_server_that_dies_is_reported_with_binary_port_and_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_stack: EmbeddedStack
) -> None:
    binary = _fake_server(tmp_path, 'echo "fatal: cannot open the frobnicator" >&2; exit 3')
    monkeypatch.setattr(embedded_module, "redis_binary", lambda: binary)
    with pytest.raises(StackError) as caught:
        fresh_stack.start()
    error = caught.value
    assert "cannot open the frobnicator" in str(error)
    assert error.context["binary"] == binary
    assert error.context["exit_code"] == 3
    assert isinstance(error.context["port"], int)


def test_a_server_that_never_answers_hits_the_deadline_and_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wait_until_gone: WaitGone
) -> None:
    pid_file = tmp_path / "pid"
    binary = _fake_server(tmp_path, f'echo $$ > {pid_file}; echo "warming up"; exec sleep 600')
    monkeypatch.setattr(embedded_module, "redis_binary", lambda: binary)
    stack = EmbeddedStack(
        KafkaConfig(bootstrap="unused:1"), RedisConfig(url=""), start_timeout_s=1.0,
        create_topics=False,
    )  # fmt: skip
    with pytest.raises(StackError, match="did not answer") as caught:
        stack.start()
    assert "warming up" in str(caught.value)
    assert wait_until_gone([int(pid_file.read_text())]) == []


def test_a_port_taken_between_choosing_and_binding_is_retried(
    monkeypatch: pytest.MonkeyPatch, fresh_stack: EmbeddedStack
) -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    offered = iter([taken, taken])
    monkeypatch.setattr(
        embedded_module, "free_port", lambda host: next(offered, None) or real_free_port(host)
    )
    try:
        info = fresh_stack.start()
    finally:
        squatter.close()
    kafka_port = int(info.bootstrap.rsplit(":", 1)[1])
    redis_port = int(info.redis_url.rsplit(":", 1)[1].split("/")[0])
    assert taken not in (kafka_port, redis_port)
    redis_ping("127.0.0.1", redis_port)


def test_another_server_answering_on_our_port_is_not_mistaken_for_ours(
    stack: StackInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    session_redis_port = int(stack.redis_url.rsplit(":", 1)[1].split("/")[0])
    offered = iter([session_redis_port])

    def port_then_free(host: str) -> int:
        return next(offered, None) or real_free_port(host)

    monkeypatch.setattr("services.stack.embedded.free_port", port_then_free)
    with EmbeddedStack(stack.kafka_config(), RedisConfig(url=""), create_topics=False) as info:
        assert set(info.pids) == {"redis"}
        assert str(session_redis_port) not in info.redis_url
        ours = redis.Redis.from_url(info.redis_url)
        ours.set("whose", "ours")
        ours.close()
    session = redis.Redis.from_url(stack.redis_url)
    assert session.get("whose") is None
    session.close()


def test_servers_started_from_a_short_lived_thread_outlive_that_thread(
    fresh_stack: EmbeddedStack,
) -> None:
    started: list[StackInfo] = []
    worker = threading.Thread(target=lambda: started.append(fresh_stack.start()))
    worker.start()
    worker.join()
    (info,) = started
    time.sleep(0.5)  # give a (wrongly) parent-death-signalled child time to die
    assert fresh_stack.exited() == {}
    redis_ping("127.0.0.1", int(info.redis_url.rsplit(":", 1)[1].split("/")[0]))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_no_orphans_when_the_parent_is_killed_with_sigkill(wait_until_gone: WaitGone) -> None:
    program = (
        "import json, time\n"
        "from services.stack import EmbeddedStack\n"
        "info = EmbeddedStack(create_topics=False).start()\n"
        "print(json.dumps(sorted(info.pids.values())), flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", program], stdout=subprocess.PIPE, env=own_env(), cwd=REPO, text=True
    )
    try:
        assert parent.stdout is not None
        pids = json.loads(parent.stdout.readline())
        assert len(pids) == 2
        for pid in pids:
            os.kill(pid, 0)  # both run (raises ProcessLookupError otherwise)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    assert wait_until_gone(pids) == []
