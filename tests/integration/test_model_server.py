"""``driftloop serve`` as a real process: real Redis pointer, real broker, real store.

Checkpoints are written by the project's own trainer and checkpointer into a
temporary store (signed with the session key of tests/conftest.py). The pointer
is changed the way the contract writes it (hash fields per
``services.pointer.base``, a PUBLISH on the version channel).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import redis
from river import datasets

from schemas.codec import decode
from schemas.events import FeedbackEvent, InferenceLog
from services.checkpoints.checkpointer import Checkpointer, CheckpointerConfig
from services.checkpoints.config import StoreConfig
from services.checkpoints.store import CheckpointStore
from services.config import RedisConfig
from services.learning.config import example_path, load_config
from services.learning.store_sink import CheckpointerSink
from services.learning.synthetic import examples_from
from services.learning.trainer import OnlineTrainer
from services.pointer.base import channel_name, history_key, pointer_key, servers_key
from services.server.loader import StoreLoader
from services.server.routing import routes_to_canary
from services.stack import EmbeddedStack
from services.stack.binaries import redis_binary
from services.stack.process import ChildProcess, free_port
from tests.integration._procs import read_topic

if TYPE_CHECKING:
    from tests.integration.conftest import Sandbox

MODEL = "river-logreg"
CONFIG = example_path("river_logreg")
SERVE = [sys.executable, "-c", "from services.cli import main; main()", "serve"]


@dataclass
class Versions:
    store: Path
    names: list[str]


@pytest.fixture
def versions(tmp_path: Path) -> Versions:
    """Three checkpoints of the shipped river example, trained on more data each time."""
    store = tmp_path / "store"
    config = load_config(CONFIG).model(MODEL)
    sink = CheckpointerSink(
        Checkpointer(
            CheckpointStore(StoreConfig(root=store, fsync=False)),
            CheckpointerConfig(async_saves=False),
        )
    )
    trainer = OnlineTrainer(config, sink)
    names = []
    exs = list(examples_from(datasets.Phishing(), MODEL, limit=600))
    for i, ex in enumerate(exs):
        trainer.process(ex, topic="training-examples", partition=0, offset=i)
        if i in (199, 399, 599):
            names.append(trainer.checkpoint("manual", "test").version)
    return Versions(store, names)


def set_pointer(
    client: redis.Redis[str],
    prefix: str,
    epoch: int,
    *,
    publish: bool = True,
    history: tuple[str, ...] = (),
    **fields: str,
) -> None:
    """Write the pointer as the contract's writer would (one MULTI), then hint."""
    values = {"live": "", "previous": "", "canary": "", "canary_percent": "0", "shadow": ""}
    values |= fields | {"epoch": str(epoch)}
    pipe = client.pipeline(transaction=True)
    pipe.hset(pointer_key(prefix, MODEL), mapping=values)
    pipe.delete(history_key(prefix, MODEL))
    if history:
        pipe.rpush(history_key(prefix, MODEL), *history)
    pipe.execute()
    if publish:
        client.publish(channel_name(prefix, MODEL), str(epoch))


class Server:
    """One ``driftloop serve`` subprocess and an HTTP client for it."""

    def __init__(self, env: dict[str, str], store: Path, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.server_id = f"it-{self.port}"
        argv = [*SERVE, "--config", str(CONFIG), "--store", str(store)]
        argv += ["--port", str(self.port), "--server-id", self.server_id]
        with log.open("ab") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30.0)

    def get(self, path: str) -> httpx.Response:
        return self.http.get(path)

    def predict(self, instances: list[dict[str, Any]]) -> httpx.Response:
        return self.http.post(f"/v1/models/{MODEL}:predict", json={"instances": instances})

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = self.get(f"/v1/models/{MODEL}").json()
        return body

    def wait(self, cond: Callable[[], bool], what: str, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.output()}")
            try:
                if cond():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}:\n{self.output()[-3000:]}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM and wait; the exit status (uvicorn re-raises SIGTERM after a
        graceful shutdown, so -15 is a clean stop when the log says so)."""
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return -9
        return self.proc.returncode


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for s in started:
        s.stop()


def server_env(sandbox: Sandbox, store: Path, redis_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(sandbox.stack.env())
    env.update(
        {
            "DRIFTLOOP_REDIS_URL": redis_url,
            "DRIFTLOOP_REDIS_KEY_PREFIX": sandbox.redis.key_prefix,
            "DRIFTLOOP_REDIS_SOCKET_TIMEOUT_S": "1",
            "DRIFTLOOP_TOPIC_PREFIX": sandbox.topics.prefix,
            "DRIFTLOOP_STORE_ROOT": str(store),
            "DRIFTLOOP_SERVER_POLL_INTERVAL_S": "0.5",
            "DRIFTLOOP_SERVER_REPORT_INTERVAL_S": "0.5",
            "DRIFTLOOP_SERVER_SPOOL_DIR": str(store.parent / f"spool-{uuid.uuid4().hex[:8]}"),
        }
    )
    env.update(extra)
    return env


def reported_ts(client: redis.Redis[str], prefix: str, server_id: str) -> int:
    raw = client.hget(servers_key(prefix, MODEL), server_id)
    return 0 if raw is None else int(json.loads(raw)["ts"])


def _instances(n: int, prefix: str) -> list[dict[str, Any]]:
    exs = list(examples_from(datasets.Phishing(), MODEL, limit=n))
    return [
        {"request_id": f"{prefix}-{i}", "features": dict(e.features)} for i, e in enumerate(exs)
    ]


def test_serve_loads_live_follows_changes_and_logs_every_prediction(
    sandbox: Sandbox,
    redis_client: redis.Redis[str],
    versions: Versions,
    tmp_path: Path,
    servers: list[Server],
) -> None:
    v1, v2, v3 = versions.names
    prefix = sandbox.redis.key_prefix
    set_pointer(redis_client, prefix, 1, live=v1)
    server = Server(
        server_env(sandbox, versions.store, sandbox.stack.redis_url),
        versions.store,
        tmp_path / "serve.log",
    )
    servers.append(server)
    server.wait(lambda: server.get("/readyz").status_code == 200, "ready")

    instances = _instances(20, "a")
    r = server.predict(instances)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model_version"], body["epoch"]) == (v1, 1)

    # What the server answers is what the checkpoint predicts.
    loader = StoreLoader(StoreConfig(root=versions.store), load_config(CONFIG))
    want = loader.load(MODEL, v1).predict_many([i["features"] for i in instances])
    assert [p["prediction"] for p in body["predictions"]] == [p.value for p in want]

    logs = [decode(InferenceLog, v) for v in read_topic(sandbox, sandbox.topics.inference_logs, 20)]
    assert sorted(e.request_id for e in logs) == sorted(i["request_id"] for i in instances)
    assert {(e.model_version, e.route, e.server) for e in logs} == {(v1, "live", server.server_id)}

    # A promote: pointer hash + channel. The server converges and says so.
    set_pointer(redis_client, prefix, 2, live=v2, previous=v1, history=(v1,))
    server.wait(lambda: server.status()["epoch"] == 2, "epoch 2")
    assert server.predict(instances[:1]).json()["model_version"] == v2
    server.wait(
        lambda: (
            '"epoch":2'
            in (redis_client.hget(servers_key(prefix, MODEL), server.server_id) or "").replace(
                " ", ""
            )
        ),
        "epoch 2 reported in the servers hash",
    )
    server.wait(
        lambda: (
            f'driftloop_server_applied_epoch{{model="{MODEL}"}} 2.0' in server.get("/metrics").text
        ),
        "epoch 2 in /metrics",
    )

    assert "driftloop_publish_sent_total" in server.get("/metrics").text  # the publisher's own

    # A canary at 50 %, routed by request id.
    set_pointer(
        redis_client, prefix, 3, live=v2, previous=v1, canary=v3, canary_percent="50", history=(v1,)
    )
    server.wait(lambda: server.status()["canary"] == v3, "canary applied")
    body = server.predict(instances).json()
    for inst, p in zip(instances, body["predictions"], strict=True):
        canary = routes_to_canary(inst["request_id"], 50.0)
        assert (p["route"], p["model_version"]) == (("canary", v3) if canary else ("live", v2))

    # Feedback: 202 once the broker has it.
    feedback = FeedbackEvent.new(request_id="a-0", model=MODEL, label=True)
    r = server.http.post("/v1/feedback", json=feedback.model_dump(mode="json"))
    assert r.status_code == 202, r.text
    got = [decode(FeedbackEvent, v) for v in read_topic(sandbox, sandbox.topics.feedback, 1)]
    assert got == [feedback]

    # A version that does not load (not in the store) keeps the old one serving.
    set_pointer(redis_client, prefix, 4, live="river-logreg-009999", previous=v2)
    server.wait(
        lambda: (server.status()["last_error"] or {}).get("epoch") == 4, "load error reported"
    )
    status = server.status()
    assert (status["epoch"], status["live"]) == (3, v2)
    assert server.predict(instances[:1]).status_code == 200

    assert server.stop() in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in server.output()
    assert redis_client.hget(servers_key(prefix, MODEL), server.server_id) is None


def test_serve_keeps_serving_while_redis_is_away_and_catches_up(
    sandbox: Sandbox, versions: Versions, tmp_path: Path, servers: list[Server]
) -> None:
    v1, v2, v3 = versions.names
    prefix = sandbox.redis.key_prefix
    # A Redis of this test's own (the session's is shared): paused, then emptied.
    with EmbeddedStack(kafka=sandbox.kafka, redis=RedisConfig(url=""), create_topics=False) as own:
        client: redis.Redis[str] = redis.Redis.from_url(own.redis_url, decode_responses=True)
        set_pointer(client, prefix, 1, live=v1)
        server = Server(
            server_env(sandbox, versions.store, own.redis_url),
            versions.store,
            tmp_path / "serve.log",
        )
        servers.append(server)
        server.wait(lambda: server.get("/readyz").status_code == 200, "ready")
        pid = own.pids["redis"]

        os.kill(pid, signal.SIGSTOP)
        try:
            server.wait(lambda: server.status()["pointer_error"] is not None, "pointer unreadable")
            for i in range(5):
                r = server.predict(_instances(3, f"paused{i}"))
                assert r.status_code == 200, r.text
                assert r.json()["model_version"] == v1
            assert server.get("/readyz").status_code == 200
        finally:
            os.kill(pid, signal.SIGCONT)

        # Back: a change made without any channel message is caught up by the epoch check.
        set_pointer(client, prefix, 2, publish=False, live=v2, previous=v1, history=(v1,))
        server.wait(lambda: server.status()["epoch"] == 2, "caught up to epoch 2")
        assert server.status()["pointer_error"] is None

        # Redis restarted empty: the server keeps its versions; a lower epoch never applies.
        client.flushall()
        assert server.predict(_instances(2, "empty")).json()["model_version"] == v2
        set_pointer(client, prefix, 1, live=v3)
        written_ms = time.time_ns() // 1_000_000
        # Reports follow checks in the server's loop: one 1.2 s newer than the write
        # comes after at least one full read of the lower-epoch pointer.
        server.wait(
            lambda: reported_ts(client, prefix, server.server_id) > written_ms + 1200,
            "a check after the lower epoch was written",
        )
        assert server.status()["epoch"] == 2
        # Restored from version-events (same epoch 2), then a rollback to the resident v1.
        set_pointer(client, prefix, 2, live=v2, previous=v1, history=(v1,))
        set_pointer(client, prefix, 3, live=v1, previous=v2, history=(v2,))
        server.wait(lambda: server.status()["epoch"] == 3, "epoch 3 after the restore")
        status = server.status()
        assert status["live"] == v1
        assert v3 not in status["resident"]
        assert server.predict(_instances(2, "after")).json()["model_version"] == v1
        client.close()
        assert server.stop() in (0, -signal.SIGTERM)


def _start_redis(port: int, workdir: Path) -> ChildProcess:
    """A redis-server of this test's own, no persistence: a restart comes back empty."""
    workdir.mkdir(exist_ok=True)
    argv = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(workdir), "--daemonize", "no"]
    child = ChildProcess("redis", argv, workdir / f"redis-{port}.log", port)
    client: redis.Redis[str] = redis.Redis(port=port, decode_responses=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or child.exit_code() is not None:
                raise AssertionError(child.output_tail()) from None
            time.sleep(0.05)
    client.close()
    return child


def test_serve_survives_a_redis_restart_and_hears_the_channel_again(
    sandbox: Sandbox, versions: Versions, tmp_path: Path, servers: list[Server]
) -> None:
    """Redis killed and restarted empty, the pointer restored (as from version-events):
    the server kept serving, and after the restart a channel message alone (the
    epoch check runs only every 60 s here) makes it apply a promote."""
    v1, v2, _ = versions.names
    prefix = sandbox.redis.key_prefix
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    child = _start_redis(port, tmp_path / "redis")
    try:
        client: redis.Redis[str] = redis.Redis(port=port, decode_responses=True)
        set_pointer(client, prefix, 1, live=v1)
        env = server_env(sandbox, versions.store, url, DRIFTLOOP_SERVER_POLL_INTERVAL_S="60")
        server = Server(env, versions.store, tmp_path / "serve.log")
        servers.append(server)
        server.wait(lambda: server.get("/readyz").status_code == 200, "ready")

        child.stop()  # Redis gone
        for i in range(3):
            r = server.predict(_instances(2, f"down{i}"))
            assert (r.status_code, r.json()["model_version"]) == (200, v1)

        child = _start_redis(port, tmp_path / "redis")  # back, empty
        assert client.hgetall(pointer_key(prefix, MODEL)) == {}
        assert server.predict(_instances(2, "empty")).json()["model_version"] == v1
        set_pointer(client, prefix, 1, publish=False, live=v1)  # restored from version-events

        # The listener resubscribes on its own; then one message makes the server look.
        channel = channel_name(prefix, MODEL)

        def subscribed() -> bool:
            return bool(dict(client.pubsub_numsub(channel)).get(channel, 0) >= 1)

        server.wait(subscribed, "the server subscribed to the channel again", 60)
        set_pointer(client, prefix, 2, live=v2, previous=v1, history=(v1,))
        # Well under the 60 s epoch check: only the channel message can explain it.
        server.wait(lambda: server.status()["epoch"] == 2, "the promote heard on the channel", 40)
        assert server.predict(_instances(1, "after")).json()["model_version"] == v2
        client.close()
    finally:
        child.stop()
