"""RedisPointer on the real Redis; its outbox relay and restore on the real broker."""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import os
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest
import redis

from schemas.codec import decode
from schemas.events import VersionEvent
from services.pointer.base import (
    PointerLostError,
    PointerUnavailableError,
    StaleEpochError,
    channel_name,
    outbox_key,
    relayed_key,
)
from services.pointer.factory import LazyReferences
from services.pointer.log import KafkaVersionLog, read_records
from services.pointer.redis import RedisPointer
from services.pointer.relay import OutboxRelay, relay_pending
from services.pointer.restore import restore_pointers
from streams import worker as worker_module
from tests.unit.pointer_contract import CONTRACT, CONTRACT_IDS, M, v
from tests.unit.store_helpers import make_store, save

if TYPE_CHECKING:
    from tests.integration.conftest import Sandbox


def outbox_events(client: redis.Redis[str], prefix: str) -> list[VersionEvent]:
    return [decode(VersionEvent, f["event"]) for _id, f in client.xrange(outbox_key(prefix))]


def make_pointer(
    sandbox: Sandbox, client: redis.Redis[str], *, log: bool = True, **kwargs: Any
) -> RedisPointer:
    kwargs.setdefault("history_depth", 3)
    return RedisPointer(
        client,
        key_prefix=sandbox.redis.key_prefix,
        log=KafkaVersionLog(sandbox.kafka, sandbox.topics.version_events) if log else None,
        **kwargs,
    )


def make_relay(sandbox: Sandbox, client: redis.Redis[str]) -> OutboxRelay:
    return OutboxRelay(
        client,
        key_prefix=sandbox.redis.key_prefix,
        kafka=sandbox.kafka,
        topic=sandbox.topics.version_events,
    )


def logged(sandbox: Sandbox) -> list[VersionEvent]:
    records, _hw = read_records(sandbox.kafka, sandbox.topics.version_events)
    return [r.event for r in records if r.event is not None]


@pytest.mark.parametrize("behaviour", CONTRACT, ids=CONTRACT_IDS)
def test_redis_pointer_contract(
    behaviour: Any, sandbox: Sandbox, redis_client: redis.Redis[str]
) -> None:
    behaviour(
        lambda **kw: make_pointer(sandbox, redis_client, log=False, **kw),
        lambda: outbox_events(redis_client, sandbox.redis.key_prefix),
    )


def test_each_change_is_published_on_the_models_channel(
    sandbox: Sandbox, redis_client: redis.Redis[str]
) -> None:
    pubsub = redis_client.pubsub()
    pubsub.subscribe(channel_name(sandbox.redis.key_prefix, M))
    assert pubsub.get_message(timeout=10) is not None  # the subscribe confirmation
    p = make_pointer(sandbox, redis_client)
    made = [p.promote(M, v(1), actor="a"), p.set_canary(M, v(2), 20.0, actor="a")]
    got: list[VersionEvent] = []
    deadline = time.monotonic() + 30
    while len(got) < 2 and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=1)
        if message is not None and message["type"] == "message":
            got.append(decode(VersionEvent, message["data"]))
    pubsub.close()
    assert got == made


def test_a_change_whose_relay_never_ran_reaches_the_topic_exactly_once(
    sandbox: Sandbox, redis_client: redis.Redis[str]
) -> None:
    p = make_pointer(sandbox, redis_client)
    first = p.promote(M, v(1), actor="a", reason="crash right after Redis")
    # the process died here: applied in Redis, nothing on the topic yet
    assert logged(sandbox) == []
    assert outbox_events(redis_client, sandbox.redis.key_prefix) == [first]
    relay = make_relay(sandbox, redis_client)
    assert relay.relay_pending().sent == 1
    assert relay.relay_pending().sent == 0
    assert [e.event_id for e in logged(sandbox)] == [f"{M}:1"]
    assert logged(sandbox)[0] == first

    # a relay killed after the broker acked but before its one Redis transaction
    # (remove the entries, record the confirmed offsets): the entry and the old marks stay
    second = p.promote(M, v(2), actor="a")
    marks_key = relayed_key(sandbox.redis.key_prefix)
    marks = redis_client.hgetall(marks_key)
    assert relay.relay_pending().sent == 1
    redis_client.delete(marks_key)
    redis_client.hset(marks_key, mapping=marks)
    redis_client.xadd(
        outbox_key(sandbox.redis.key_prefix),
        {"model": M, "epoch": "2", "event": second.model_dump_json()},
    )
    result = relay.relay_pending()
    assert (result.sent, result.duplicates, result.left) == (0, 1, 0)
    # and once more with the confirmed offsets lost (Redis flushed the relay's marks)
    redis_client.delete(marks_key)
    redis_client.xadd(
        outbox_key(sandbox.redis.key_prefix),
        {"model": M, "epoch": "1", "event": first.model_dump_json()},
    )
    assert relay.relay_pending().duplicates == 1
    assert [e.event_id for e in logged(sandbox)] == [f"{M}:1", f"{M}:2"]


def _promote_then_die(url: str, options: dict[str, Any], prefix: str) -> None:
    client = redis.Redis.from_url(url, **options)
    RedisPointer(client, key_prefix=prefix, history_depth=3, log=None).promote(
        M, v(7), actor="doomed", reason="killed before relaying"
    )
    os._exit(0)  # no relay, no cleanup: as if killed


def test_a_process_killed_after_its_change_loses_no_audit_record(
    sandbox: Sandbox, redis_client: redis.Redis[str]
) -> None:
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(
        target=_promote_then_die,
        args=(sandbox.redis.url, sandbox.redis.client_options(), sandbox.redis.key_prefix),
    )
    proc.start()
    proc.join(120)
    assert proc.exitcode == 0
    result = relay_pending(sandbox.redis, sandbox.kafka, sandbox.topics, client=redis_client)
    assert result.sent == 1
    (event,) = logged(sandbox)
    assert (event.event_id, event.live, event.actor) == (f"{M}:1", v(7), "doomed")


def _race(
    url: str, options: dict[str, Any], prefix: str, writer: int, each: int, start: Any
) -> None:
    client = redis.Redis.from_url(url, **options)
    p = RedisPointer(client, key_prefix=prefix, history_depth=3, log=None)
    start.wait()  # every writer imported and connected: they race from here
    for i in range(each):
        while True:
            state = p.get(M)
            try:
                p.promote(
                    M,
                    v(1000 * (writer + 1) + i),
                    actor=f"proc{writer}",
                    expected_epoch=state.epoch if state else 0,
                )
                break
            except StaleEpochError:
                client.incr(prefix + "test:stale")
                continue


def test_racing_writer_processes_get_one_epoch_each_in_one_chain(
    sandbox: Sandbox, redis_client: redis.Redis[str]
) -> None:
    writers, each = 4, 25
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(writers + 1)
    args = (sandbox.redis.url, sandbox.redis.client_options(), sandbox.redis.key_prefix)
    procs = [ctx.Process(target=_race, args=(*args, w, each, start)) for w in range(writers)]
    for proc in procs:
        proc.start()
    start.wait(timeout=300)
    for proc in procs:
        proc.join(300)
    assert [proc.exitcode for proc in procs] == [0] * writers
    stale = redis_client.get(sandbox.redis.key_prefix + "test:stale") or "0"
    print(f"{writers} writer processes, {writers * each} promotions, {stale} lost races retried")
    events = outbox_events(redis_client, sandbox.redis.key_prefix)
    assert [e.epoch for e in events] == list(range(1, writers * each + 1))
    for before, after in itertools.pairwise(events):
        assert after.from_live == before.live  # nobody overwrote a change it had not seen
        assert after.history == (before.live, *before.history)[:3]
    assert sorted(e.live for e in events if e.live) == sorted(
        v(1000 * (w + 1) + i) for w in range(writers) for i in range(each)
    )
    state = make_pointer(sandbox, redis_client).get(M)
    assert state is not None
    assert (state.epoch, state.live) == (writers * each, events[-1].live)


def test_concurrent_relays_publish_each_change_once(
    sandbox: Sandbox, redis_client: redis.Redis[str]
) -> None:
    p = make_pointer(sandbox, redis_client, log=False)
    for n in range(1, 21):
        p.promote(M, v(n), actor="a")
    results: list[Any] = []

    def run() -> None:
        results.append(make_relay(sandbox, redis_client).relay_pending(wait_s=60))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.sent for r in results) == 20
    ids = [e.event_id for e in logged(sandbox)]
    assert sorted(ids) == sorted(f"{M}:{n}" for n in range(1, 21))


def lose_everything(sandbox: Sandbox, client: redis.Redis[str]) -> None:
    """FLUSHALL on the session's own Redis; on a shared one, this test's keys only."""
    if os.environ.get("DRIFTLOOP_REDIS_URL"):
        keys = list(client.scan_iter(match=f"{sandbox.redis.key_prefix}*"))
        if keys:
            client.delete(*keys)
    else:
        client.flushall()


def test_flush_refuses_changes_until_restore_brings_pointer_and_epoch_back(
    sandbox: Sandbox, redis_client: redis.Redis[str]
) -> None:
    p = make_pointer(sandbox, redis_client, history_depth=2)
    for n in range(1, 5):
        p.promote(M, v(n), actor="a")
    p.set_canary(M, v(8), 10.0, actor="a")
    p.set_shadow(M, v(9), actor="a")
    p.promote("other", "other-000001", actor="a")
    make_relay(sandbox, redis_client).relay_pending()
    before = {m: p.get(m) for m in (M, "other")}

    lose_everything(sandbox, redis_client)

    with pytest.raises(PointerLostError, match="pointer restore"):
        p.promote(M, v(5), actor="a")
    with pytest.raises(PointerLostError):
        p.rollback(M, actor="a")
    with pytest.raises(PointerLostError):  # GC stops rather than deleting the live version
        make_pointer(sandbox, redis_client).references(M)
    assert p.get(M) is None
    log = KafkaVersionLog(sandbox.kafka, sandbox.topics.version_events)
    done = restore_pointers(p, log)
    assert [(r.model, r.outcome, r.redis_epoch) for r in done] == [
        (M, "restored", None),
        ("other", "restored", None),
    ]
    assert {m: p.get(m) for m in (M, "other")} == before
    assert p.promote(M, v(5), actor="a").epoch == 7  # epochs continue: no collision
    assert [r.outcome for r in restore_pointers(p, log)] == ["kept", "kept"]
    state = p.get(M)
    assert state is not None
    assert state.epoch == 7


def test_a_new_model_starts_at_epoch_one_when_the_log_does_not_know_it(
    sandbox: Sandbox, redis_client: redis.Redis[str]
) -> None:
    p = make_pointer(sandbox, redis_client)
    p.promote("known", "known-000001", actor="a")
    make_relay(sandbox, redis_client).relay_pending()
    assert p.promote("fresh", "fresh-000001", actor="a").epoch == 1


def test_a_worker_relays_what_a_dead_cli_left_pending(
    sandbox: Sandbox, redis_client: redis.Redis[str], tmp_path: Any
) -> None:
    p = make_pointer(sandbox, redis_client, log=False)
    left = p.promote(M, v(3), actor="cli", reason="the CLI died before relaying")
    built = worker_module.build(
        "joiner",
        kafka=sandbox.kafka,
        topics=sandbox.topics,
        worker=worker_module.WorkerConfig(datadir=tmp_path / "faust"),
        redis_config=sandbox.redis,
    )
    assert built.relay_tick is not None  # installed as the worker's timer
    asyncio.run(built.relay_tick())
    assert logged(sandbox) == [left]
    assert outbox_events(redis_client, sandbox.redis.key_prefix) == []


def test_a_reused_epoch_is_kept_for_a_human_not_dropped_as_a_duplicate(
    sandbox: Sandbox, redis_client: redis.Redis[str]
) -> None:
    p = make_pointer(sandbox, redis_client, log=False)
    first = p.promote(M, v(1), actor="a")
    relay = make_relay(sandbox, redis_client)
    relay.relay_pending()
    # Redis went back to a snapshot older than that relay (its confirmed offsets too)
    # and epoch 1 was made again, differently
    redis_client.delete(relayed_key(sandbox.redis.key_prefix))
    other = first.model_copy(update={"live": v(2), "actor": "b"})
    redis_client.xadd(
        outbox_key(sandbox.redis.key_prefix),
        {"model": M, "epoch": "1", "event": other.model_dump_json()},
    )
    result = relay.relay_pending()
    assert (result.sent, result.duplicates, result.conflicts, result.left) == (0, 0, 1, 1)
    assert logged(sandbox) == [first]
    assert outbox_events(redis_client, sandbox.redis.key_prefix) == [other]


WORKER_MODELS = """
[[model]]
name = "fraud"
kind = "river"
factory = { path = "river.linear_model.LogisticRegression" }
[model.retention]
policies = [{ policy = "latest_n", params = { n = 1 } }]
"""


def test_the_workers_gc_keeps_what_the_pointer_names(
    sandbox: Sandbox, redis_client: redis.Redis[str], tmp_path: Any
) -> None:
    store = make_store(tmp_path, gc_after_commit=False)
    versions = [save(store, M, step).version for step in range(6)]
    store.close()
    p = make_pointer(sandbox, redis_client, log=False, history_depth=3)
    p.promote(M, versions[0], actor="a")
    p.promote(M, versions[1], actor="a")
    p.set_shadow(M, versions[2], actor="a")
    models = tmp_path / "models.toml"
    models.write_text(WORKER_MODELS)
    built = worker_module.build(
        "trainer",
        kafka=sandbox.kafka,
        topics=sandbox.topics,
        worker=worker_module.WorkerConfig(datadir=tmp_path / "faust"),
        models_path=models,
        store=store.config,
        redis_config=sandbox.redis,
        from_scratch=True,  # the helper's checkpoints hold no model state
    )
    assert built.trainer is not None
    worker_store = built.trainer.pool.store
    try:
        (plan,) = worker_store.gc(M)
        assert sorted(plan.kept) == [versions[i] for i in (0, 1, 2, 5)]
        assert (plan.kept[versions[1]], plan.kept[versions[2]]) == ("live", "shadow")
        # Redis unreachable: the worker's GC stops before deleting anything
        assert isinstance(worker_store.references, LazyReferences)  # made at the first GC
        worker_store.references.pointer().client = redis.Redis(host="127.0.0.1", port=1)
        save(worker_store, M, 99)
        with pytest.raises(PointerUnavailableError):
            worker_store.gc(M)
        assert len(worker_store.manifests(M)) == 5
    finally:
        built.trainer.pool.close()
