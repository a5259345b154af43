"""InMemoryPointer: the pointer contract, loss and restore, relay, GC references, version checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from schemas.events import VersionEvent
from services.checkpoints import CheckpointStore
from services.checkpoints.retention import KeepAny, KeepLatest, KeepPinned, KeepReferenced
from services.checkpoints.signing import generate_key_file
from services.config import TopicsConfig
from services.kafka import topic_configs
from services.pointer.base import PointerLostError, VersionRefusedError
from services.pointer.memory import InMemoryPointer, InMemoryVersionLog
from services.pointer.restore import restore_pointers
from services.pointer.validation import StoreVersionCheck
from tests.unit.pointer_contract import CONTRACT, CONTRACT_IDS, M, Make, Outbox, v
from tests.unit.store_helpers import make_store, save


@pytest.mark.parametrize("behaviour", CONTRACT, ids=CONTRACT_IDS)
def test_in_memory_pointer_contract(behaviour: Any) -> None:
    made: list[InMemoryPointer] = []

    def make(**kwargs: Any) -> InMemoryPointer:
        made.append(InMemoryPointer(**kwargs))
        return made[-1]

    def outbox() -> list[VersionEvent]:
        return list(made[-1].outbox)

    make_: Make = make
    outbox_: Outbox = outbox
    behaviour(make_, outbox_)


def test_a_lost_pointer_refuses_changes_until_restored_from_the_log() -> None:
    log = InMemoryVersionLog()
    p = InMemoryPointer(history_depth=2, log=log)
    for n in range(1, 4):
        p.promote(M, v(n), actor="a")
    p.set_canary(M, v(9), 5.0, actor="a")
    p.promote("other", "other-000001", actor="a")
    assert p.relay_pending() == 5
    before = {m: p.get(m) for m in (M, "other")}
    p.lose_everything()
    with pytest.raises(PointerLostError, match="pointer restore"):
        p.promote(M, v(4), actor="a")
    with pytest.raises(PointerLostError):
        p.set_shadow(M, v(4), actor="a")  # refused as lost, not as "needs a live version"
    assert p.get(M) is None
    done = restore_pointers(p, log)
    assert [(r.model, r.outcome, r.logged_epoch, r.redis_epoch) for r in done] == [
        (M, "restored", 4, None),
        ("other", "restored", 1, None),
    ]
    assert {m: p.get(m) for m in (M, "other")} == before
    e = p.promote(M, v(4), actor="a")
    assert e.epoch == 5  # continues after the logged epochs: no collision in the log
    assert [r.outcome for r in restore_pointers(p, log)] == ["kept", "kept"]


def test_a_brand_new_model_starts_at_epoch_one_with_a_log() -> None:
    log = InMemoryVersionLog()
    p = InMemoryPointer(log=log)
    assert p.promote(M, v(1), actor="a").epoch == 1


def test_relay_copies_each_change_once() -> None:
    log = InMemoryVersionLog()
    p = InMemoryPointer(log=log)
    e = p.promote(M, v(1), actor="a")
    p.outbox.append(e)  # a relay that died after the log took it, before it cleared the outbox
    assert p.relay_pending() == 1
    assert [x.event_id for x in log.events] == [f"{M}:1"]


def test_the_pointer_is_the_reference_source_gc_keeps(tmp_path: Path) -> None:
    store = make_store(tmp_path, gc_after_commit=False)
    versions = [save(store, M, step).version for step in range(10)]
    pointer = InMemoryPointer(history_depth=2)
    for version in versions[:4]:
        pointer.promote(M, version, actor="a")  # live 3, history 2, 1 (0 fell out)
    pointer.set_canary(M, versions[5], 10.0, actor="a")
    pointer.set_shadow(M, versions[6], actor="a")
    store.retention = KeepAny(KeepLatest(1), KeepPinned(), KeepReferenced(pointer, 2))
    store.gc(M)
    left = {m.version for m in store.manifests(M)}
    assert left == {versions[i] for i in (1, 2, 3, 5, 6, 9)}


class Unreadable:
    def references(self, model: str) -> Any:
        raise PointerLostError("cannot read", model=model)


def test_gc_aborts_before_deleting_when_the_pointer_cannot_be_read(tmp_path: Path) -> None:
    store = make_store(tmp_path, gc_after_commit=False)
    for step in range(3):
        save(store, M, step)
    store.retention = KeepAny(KeepLatest(1), KeepReferenced(Unreadable(), 3))
    with pytest.raises(PointerLostError):
        store.gc(M)
    assert len(store.manifests(M)) == 3


def _store_pointer(store: CheckpointStore) -> InMemoryPointer:
    return InMemoryPointer(check=StoreVersionCheck(store.reader))


def test_absent_damaged_and_quarantined_versions_cannot_serve(tmp_path: Path) -> None:
    store = make_store(tmp_path, gc_after_commit=False)
    good, damaged, quarantined, child = (save(store, M, s).version for s in range(4))
    pointer = _store_pointer(store)
    pointer.promote(M, good, actor="a")
    with pytest.raises(VersionRefusedError, match="cannot serve"):
        pointer.promote(M, v(99), actor="a")
    (store.config.root / M / damaged / "model.safetensors").write_bytes(b"tampered")
    with pytest.raises(VersionRefusedError, match="cannot serve"):
        pointer.set_canary(M, damaged, 10.0, actor="a")
    manifest = store.config.root / M / quarantined / "manifest.json"
    manifest.write_bytes(b"{not json")
    store.gc(M, dry_run=False)  # GC moves a version with a corrupt manifest to quarantine
    assert any(q.name.startswith(quarantined) for q in store.quarantined(M))
    fresh = make_store(tmp_path, gc_after_commit=False)
    with pytest.raises(VersionRefusedError, match="quarantined"):
        _store_pointer(fresh).promote(M, quarantined, actor="a")
    pointer.promote(M, child, actor="a")
    state = pointer.get(M)
    assert state is not None
    assert (state.live, state.canary, state.epoch) == (child, None, 2)


def test_a_version_signed_by_an_untrusted_key_cannot_serve(tmp_path: Path) -> None:
    version = save(make_store(tmp_path, gc_after_commit=False), M, 0).version
    other_key = tmp_path / "keys" / "other.pem"
    generate_key_file(other_key)
    # a reader that trusts only another key: the session key's signature is not enough
    strict = make_store(tmp_path, gc_after_commit=False, signing_key_file=other_key)
    with pytest.raises(VersionRefusedError, match="cannot serve"):
        _store_pointer(strict).promote(M, version, actor="a")


def test_version_events_is_created_with_unlimited_retention() -> None:
    topics = TopicsConfig(prefix="x.")
    assert topic_configs(topics.version_events, topics)["retention.ms"] == "-1"
    assert "retention.ms" not in topic_configs(topics.feedback, topics)
    assert "retention.ms" not in topic_configs()


def test_tiering_keeps_what_the_pointer_references_hot(tmp_path: Path) -> None:
    pointer = InMemoryPointer(history_depth=1)
    plain = make_store(tmp_path, gc_after_commit=False)
    versions = [save(plain, M, step).version for step in range(8)]
    store = CheckpointStore(
        plain.config.model_copy(
            update={
                "hot_keep_newest": 1,
                "rollback_depth": 1,
                "cold_url": f"file://{tmp_path / 'cold'}",
            }
        ),
        references=pointer,
    )
    pointer.promote(M, versions[1], actor="a")
    pointer.promote(M, versions[2], actor="a")  # history: 1
    pointer.set_canary(M, versions[4], 5.0, actor="a")
    pointer.set_shadow(M, versions[5], actor="a")
    moved = store.move_tiers(M)
    assert moved == [versions[i] for i in (0, 3, 6)]
    hot = {r.version for r in store.query(M) if r.tier == "hot"}
    assert hot == {versions[i] for i in (1, 2, 4, 5, 7)}


def test_tiering_moves_nothing_when_the_pointer_cannot_be_read(tmp_path: Path) -> None:
    plain = make_store(tmp_path, gc_after_commit=False)
    for step in range(3):
        save(plain, M, step)
    store = CheckpointStore(
        plain.config.model_copy(
            update={"hot_keep_newest": 1, "cold_url": f"file://{tmp_path / 'cold'}"}
        ),
        references=Unreadable(),
    )
    with pytest.raises(PointerLostError):
        store.move_tiers(M)
    assert {r.tier for r in store.query(M)} == {"hot"}


def test_gc_references_of_a_lost_pointer_raise_instead_of_naming_nothing() -> None:
    log = InMemoryVersionLog()
    p = InMemoryPointer(log=log)
    p.promote(M, v(1), actor="a")
    assert p.references(M).live == v(1)
    p.relay_pending()
    p.lose_everything()
    with pytest.raises(PointerLostError):
        p.references(M)  # this process saw the pointer
    fresh = InMemoryPointer(log=log)  # another process, after the flush
    with pytest.raises(PointerLostError):
        fresh.references(M)  # the log knows the model
    assert fresh.references("never-promoted").live is None
    restore_pointers(fresh, log)
    assert fresh.references(M).live == v(1)
