"""The pointer commands (promote ... status, pointer restore) and GC on the real stack."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest
import redis
from typer.testing import CliRunner, Result

from services.cli import app
from services.pointer.base import servers_key
from services.pointer.log import read_records
from tests.unit.store_helpers import make_store, save

if TYPE_CHECKING:
    from tests.integration.conftest import Sandbox

M = "fraud"


@pytest.fixture
def env(sandbox: Sandbox, tmp_path: Path) -> dict[str, str]:
    store = make_store(tmp_path, gc_after_commit=False)
    for step in range(8):
        save(store, M, step)
    store.close()
    return sandbox.stack.env() | {
        "DRIFTLOOP_TOPIC_PREFIX": sandbox.topics.prefix,
        "DRIFTLOOP_REDIS_KEY_PREFIX": sandbox.redis.key_prefix,
        "DRIFTLOOP_STORE_ROOT": str(tmp_path / "hot"),
        "DRIFTLOOP_STORE_ROLLBACK_DEPTH": "2",
        "DRIFTLOOP_WORKER_MODELS": "",
    }


def v(n: int) -> str:
    return f"{M}-{n:06d}"


def run(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(app, list(args), env=env)


def ok(env: dict[str, str], *args: str) -> Any:
    result = run(env, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def refused(env: dict[str, str], *args: str) -> str:
    result = run(env, *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_changes_are_checked_recorded_relayed_and_shown(
    env: dict[str, str], sandbox: Sandbox, redis_client: redis.Redis[str], tmp_path: Path
) -> None:
    first = ok(env, "promote", M, v(1), "--reason", "first", "--actor", "alice")
    assert first["relayed"] is True
    assert (first["event"]["epoch"], first["event"]["live"]) == (1, v(1))
    ok(env, "promote", M, v(2), "--reason", "better logloss")  # actor: the OS user
    ok(env, "canary", M, v(3), "--percent", "10", "--reason", "try")
    ok(env, "shadow", M, v(4))
    assert "no committed checkpoint" in refused(env, "promote", M, v(99))
    (tmp_path / "hot" / M / v(5) / "model.safetensors").write_bytes(b"tampered")
    assert "cannot serve" in refused(env, "canary", M, v(5), "--percent", "5")
    assert "changed since the expected epoch" in refused(
        env, "promote", M, v(6), "--expect-epoch", "1"
    )
    assert "--percent" in refused(env, "canary", M, v(6))
    assert "--clear" in refused(env, "shadow", M)

    now = time.time_ns() // 1_000_000
    redis_client.hset(
        servers_key(sandbox.redis.key_prefix, M),
        mapping={
            "server-a": orjson.dumps({"epoch": 4, "ts": now}).decode(),
            "server-b": orjson.dumps({"epoch": 2, "ts": now - 60_000}).decode(),
        },
    )
    status = ok(env, "status", M)
    (model,) = status["models"]
    assert model["pointer"] == {
        "epoch": 4,
        "live": v(2),
        "previous": v(1),
        "canary": v(3),
        "canary_percent": 10.0,
        "shadow": v(4),
        "history": [v(1)],
    }
    assert [(c["epoch"], c["action"], c["in_log"]) for c in model["recent"]] == [
        (4, "shadow", True),
        (3, "canary", True),
        (2, "promote", True),
        (1, "promote", True),
    ]
    assert (model["recent"][3]["actor"], model["recent"][3]["reason"]) == ("alice", "first")
    assert [(s["server"], s["epoch"], s["stale"]) for s in model["servers"]] == [
        ("server-a", 4, False),
        ("server-b", 2, True),
    ]
    text = run(env, "status")
    assert text.exit_code == 0
    assert "epoch 4" in text.stdout
    assert "stale" in text.stdout

    back = ok(env, "rollback", M, "--reason", "bad canary metrics")
    assert (back["event"]["live"], back["event"]["from_live"]) == (v(1), v(2))
    records, _ = read_records(sandbox.kafka, sandbox.topics.version_events)
    # one partition per model (key = model): the log is in epoch order
    assert [r.event.epoch for r in records if r.event] == [1, 2, 3, 4, 5]


def test_flush_refuses_changes_until_pointer_restore(
    env: dict[str, str], sandbox: Sandbox, redis_client: redis.Redis[str]
) -> None:
    for n in (1, 2, 3):
        ok(env, "promote", M, v(n))
    ok(env, "canary", M, v(4), "--percent", "25")
    before = ok(env, "status", M)["models"][0]["pointer"]
    keys = list(redis_client.scan_iter(match=f"{sandbox.redis.key_prefix}*"))
    redis_client.delete(*keys)  # everything this deployment had in Redis is gone

    assert "pointer restore" in refused(env, "promote", M, v(5))
    assert ok(env, "status", M)["models"][0]["pointer"] is None
    restored = ok(env, "pointer", "restore")
    assert restored["models"] == [
        {"model": M, "logged_epoch": 4, "redis_epoch": None, "outcome": "restored"}
    ]
    assert ok(env, "status", M)["models"][0]["pointer"] == before
    assert ok(env, "promote", M, v(5))["event"]["epoch"] == 5
    again = ok(env, "pointer", "restore")
    assert again["models"][0]["outcome"] == "kept"


MODELS_TOML = """
[[model]]
name = "fraud"
kind = "river"
factory = { path = "river.linear_model.LogisticRegression" }
[model.retention]
policies = [{ policy = "latest_n", params = { n = 1 } }]
"""


def test_gc_keeps_what_the_pointer_names_and_aborts_when_it_cannot_read_it(
    env: dict[str, str], tmp_path: Path
) -> None:
    models = tmp_path / "models.toml"
    models.write_text(MODELS_TOML)
    for n in (1, 2, 3):
        ok(env, "promote", M, v(n))  # live 3, history 2, 1 (depth 2)
    ok(env, "canary", M, v(5), "--percent", "5")
    ok(env, "shadow", M, v(6))
    unreachable = env | {"DRIFTLOOP_REDIS_URL": "redis://127.0.0.1:1/0"}
    result = run(unreachable, "checkpoints", "gc", "--config", str(models))
    assert result.exit_code == 2, result.output
    assert len(list((tmp_path / "hot" / M).glob(f"{M}-*"))) == 8  # nothing deleted
    report = ok(env, "checkpoints", "gc", "--config", str(models))
    (plan,) = report["models"]
    left = sorted(p.name for p in (tmp_path / "hot" / M).glob(f"{M}-*"))
    assert left == [v(n) for n in (1, 2, 3, 5, 6, 8)]  # 8: the newest, always kept
    assert "live" in plan["kept"][v(3)]
    assert "rollback history" in plan["kept"][v(1)]
