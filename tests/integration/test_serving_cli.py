"""Model servers and the pointer CLI as one system: real ``driftloop serve`` and CLI processes.

Two servers follow ``driftloop promote``; ``driftloop status --json`` lists each
with the epoch it applied (the ``servers`` hash each writes); a change whose
CLI died before relaying it reaches ``version-events`` through the servers' relay.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import redis

from services.pointer.base import outbox_key
from services.pointer.log import read_records
from services.pointer.redis import RedisPointer
from tests.integration._serving import (
    MODEL,
    Server,
    Versions,
    cli,
    predict_instances,
    reported,
    server_env,
)

if TYPE_CHECKING:
    from tests.integration.conftest import Sandbox


def test_two_servers_follow_cli_promotes_report_their_epoch_and_relay_the_outbox(
    sandbox: Sandbox,
    redis_client: redis.Redis[str],
    versions: Versions,
    tmp_path: Path,
    servers: list[Server],
) -> None:
    v1, v2, v3 = versions.names
    prefix = sandbox.redis.key_prefix

    def reported_epoch(s: Server) -> int | None:
        return (reported(redis_client, prefix, s.server_id) or {}).get("epoch")

    env = server_env(sandbox, versions.store, sandbox.stack.redis_url)
    for name in ("a", "b"):
        servers.append(Server(env, versions.store, tmp_path / f"serve-{name}.log"))

    first = cli(env, "promote", MODEL, v1, "--reason", "first", "--json").json()
    assert (first["event"]["epoch"], first["relayed"]) == (1, True)
    second = cli(env, "promote", MODEL, v2, "--reason", "better", "--json").json()
    assert second["event"]["epoch"] == 2
    for s in servers:
        s.wait(lambda s=s: s.status()["epoch"] == 2, f"{s.server_id} at epoch 2")  # type: ignore[misc]  # mypy cannot type a lambda's default
        assert s.predict(predict_instances(2, s.server_id)).json()["model_version"] == v2
    for s in servers:
        s.wait(lambda s=s: reported_epoch(s) == 2, f"{s.server_id} reported epoch 2")  # type: ignore[misc]

    (model,) = cli(env, "status", MODEL, "--json").json()["models"]
    assert model["pointer"]["epoch"] == 2
    rows = {r["server"]: r for r in model["servers"]}
    assert sorted(rows) == sorted(s.server_id for s in servers)
    assert all((r["epoch"], r["stale"]) == (2, False) for r in rows.values())

    # A change whose CLI died right after it (nothing relayed): the servers relay it.
    unrelayed = RedisPointer(redis_client, key_prefix=prefix, history_depth=2, log=None)
    event = unrelayed.promote(MODEL, v3, actor="a CLI that died", reason="never relayed by it")
    assert event.epoch == 3  # in the outbox only: no CLI runs from here on, no worker runs

    def logged_epochs() -> list[int]:
        records, _ = read_records(sandbox.kafka, sandbox.topics.version_events)
        return [r.event.epoch for r in records if r.event is not None and r.event.model == MODEL]

    servers[0].wait(lambda: logged_epochs() == [1, 2, 3], "epoch 3 relayed by a server")
    servers[0].wait(lambda: redis_client.xlen(outbox_key(prefix)) == 0, "the outbox emptied")
    assert "relayed 1 pointer changes" in "".join(s.output() for s in servers)
    for s in servers:
        s.wait(lambda s=s: s.status()["live"] == v3, f"{s.server_id} serving v3")  # type: ignore[misc]
