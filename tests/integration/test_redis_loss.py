"""Redis loses its data under a running model server; ``driftloop pointer restore`` brings it back.

Everything real: checkpoints written by the project's trainer, a ``driftloop
serve`` subprocess, every pointer change through ``driftloop`` subprocesses
(relayed to ``version-events`` on the real broker), and a redis-server of
this test's own (FLUSHALL would take the shared one's keys from other tests).

While Redis holds nothing the server keeps answering with the version it
applied, changes are refused until the restore, the restore puts back the
pointer and epoch exactly, and the next change is applied with the next epoch.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import redis

from services.config import RedisConfig
from services.stack import EmbeddedStack
from tests.integration._serving import (
    MODEL,
    Server,
    Versions,
    cli,
    predict_instances,
    server_env,
)

if TYPE_CHECKING:
    from tests.integration.conftest import Sandbox


@dataclass
class Traffic:
    """Predict calls made from a thread until stopped: every answer, every failure."""

    port: int
    answers: list[tuple[str, int]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        body = {"instances": predict_instances(3, "traffic")}
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30.0) as http:
            while not self.stop.is_set():
                try:
                    r = http.post(f"/v1/models/{MODEL}:predict", json=body)
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                if r.status_code != 200:
                    self.failures.append(f"{r.status_code}: {r.text}")
                    continue
                answer = r.json()
                self.answers.append((answer["model_version"], answer["epoch"]))


def test_flush_serves_on_refuses_changes_restores_the_pointer_and_applies_the_next_epoch(
    sandbox: Sandbox, versions: Versions, tmp_path: Path, servers: list[Server]
) -> None:
    v1, v2, v3 = versions.names
    with EmbeddedStack(kafka=sandbox.kafka, redis=RedisConfig(url=""), create_topics=False) as own:
        client: redis.Redis[str] = redis.Redis.from_url(own.redis_url, decode_responses=True)
        env = server_env(sandbox, versions.store, own.redis_url)
        server = Server(env, versions.store, tmp_path / "serve.log")
        servers.append(server)

        for version, reason in ((v1, "first"), (v2, "better")):
            done = cli(env, "promote", MODEL, version, "--reason", reason, "--json").json()
            assert done["relayed"] is True  # in version-events, not only in Redis
        server.wait(lambda: (server.status()["epoch"], server.status()["live"]) == (2, v2), "v2")
        (before,) = cli(env, "status", MODEL, "--json").json()["models"]
        assert before["pointer"]["epoch"] == 2

        traffic = Traffic(server.port)
        thread = threading.Thread(target=traffic.run, name="traffic", daemon=True)
        thread.start()
        try:
            server.wait(lambda: len(traffic.answers) > 0, "traffic flowing")

            client.flushall()  # Redis lost everything
            assert client.dbsize() == 0
            server.wait(lambda: server.status()["pointer_missing"], "the server saw no pointer")
            lost_at = len(traffic.answers)

            refused = cli(env, "promote", MODEL, v3, "--reason", "while lost")
            assert refused.code == 2, refused.stdout + refused.stderr
            assert "driftloop pointer restore" in refused.stderr
            assert len(refused.stderr.strip().splitlines()) == 1
            refused = cli(env, "rollback", MODEL, "--reason", "while lost")
            assert refused.code == 2, refused.stdout + refused.stderr
            assert "driftloop pointer restore" in refused.stderr
            server.wait(lambda: len(traffic.answers) > lost_at, "answers while Redis was empty")

            restored = cli(env, "pointer", "restore", "--json").json()
            assert restored["models"] == [
                {"model": MODEL, "logged_epoch": 2, "redis_epoch": None, "outcome": "restored"}
            ]
            (after,) = cli(env, "status", MODEL, "--json").json()["models"]
            assert after["pointer"] == before["pointer"]
            server.wait(lambda: not server.status()["pointer_missing"], "the pointer back")
            restored_at = len(traffic.answers)
            server.wait(lambda: len(traffic.answers) > restored_at, "answers after the restore")
        finally:
            traffic.stop.set()
            thread.join(60)
        assert not thread.is_alive()
        assert traffic.failures == []
        assert set(traffic.answers) == {(v2, 2)}  # the whole time: v2 at epoch 2

        back = cli(env, "rollback", MODEL, "--reason", "after the restore", "--json").json()
        assert (back["event"]["epoch"], back["event"]["live"]) == (3, v1)
        server.wait(lambda: server.status()["epoch"] == 3, "the rollback applied")
        answer = server.predict(predict_instances(2, "after")).json()
        assert (answer["model_version"], answer["epoch"]) == (v1, 3)

        def servers_in_status() -> list[tuple[str, int]]:
            (model,) = cli(env, "status", MODEL, "--json").json()["models"]
            return [(r["server"], r["epoch"]) for r in model["servers"]]

        server.wait(lambda: servers_in_status() == [(server.server_id, 3)], "status: epoch 3")
        client.close()
        assert server.stop() in (0, -15)
