"""``driftloop serve`` as a real process: real Redis pointer, real broker, real store.

Checkpoints are written by the project's own trainer and checkpointer into a
temporary store (signed with the session key of tests/conftest.py). The pointer
is changed the way the contract writes it (hash fields per
``services.pointer.base``, a PUBLISH on the version channel); the tests that
change it through the CLI are in test_serving_cli.py and test_redis_loss.py.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import redis

from schemas.codec import decode
from schemas.events import FeedbackEvent, InferenceLog
from services.checkpoints.config import StoreConfig
from services.config import RedisConfig
from services.learning.config import load_config
from services.pointer.base import channel_name, pointer_key, servers_key
from services.server.loader import StoreLoader
from services.server.routing import routes_to_canary
from services.stack import EmbeddedStack
from services.stack.process import free_port
from tests.integration._procs import read_topic
from tests.integration._serving import (
    CONFIG,
    MODEL,
    Server,
    Versions,
    predict_instances,
    reported_ts,
    server_env,
    set_pointer,
    start_redis,
)

if TYPE_CHECKING:
    from tests.integration.conftest import Sandbox


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

    instances = predict_instances(20, "a")
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
                r = server.predict(predict_instances(3, f"paused{i}"))
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
        assert server.predict(predict_instances(2, "empty")).json()["model_version"] == v2
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
        assert server.predict(predict_instances(2, "after")).json()["model_version"] == v1
        client.close()
        assert server.stop() in (0, -signal.SIGTERM)


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
    child = start_redis(port, tmp_path / "redis")
    try:
        client: redis.Redis[str] = redis.Redis(port=port, decode_responses=True)
        set_pointer(client, prefix, 1, live=v1)
        env = server_env(sandbox, versions.store, url, DRIFTLOOP_SERVER_POLL_INTERVAL_S="60")
        server = Server(env, versions.store, tmp_path / "serve.log")
        servers.append(server)
        server.wait(lambda: server.get("/readyz").status_code == 200, "ready")

        child.stop()  # Redis gone
        for i in range(3):
            r = server.predict(predict_instances(2, f"down{i}"))
            assert (r.status_code, r.json()["model_version"]) == (200, v1)

        child = start_redis(port, tmp_path / "redis")  # back, empty
        assert client.hgetall(pointer_key(prefix, MODEL)) == {}
        assert server.predict(predict_instances(2, "empty")).json()["model_version"] == v1
        set_pointer(client, prefix, 1, publish=False, live=v1)  # restored from version-events

        # The listener resubscribes on its own; then one message makes the server look.
        channel = channel_name(prefix, MODEL)

        def subscribed() -> bool:
            return bool(dict(client.pubsub_numsub(channel)).get(channel, 0) >= 1)

        server.wait(subscribed, "the server subscribed to the channel again", 60)
        set_pointer(client, prefix, 2, live=v2, previous=v1, history=(v1,))
        # Well under the 60 s epoch check: only the channel message can explain it.
        server.wait(lambda: server.status()["epoch"] == 2, "the promote heard on the channel", 40)
        assert server.predict(predict_instances(1, "after")).json()["model_version"] == v2
        client.close()
    finally:
        child.stop()
