"""Hot and cold tiers: moves, transparent reads, interrupted moves, GC across tiers."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from schemas.errors import CheckpointCorruptError
from schemas.manifest import ManifestDraft
from services.checkpoints import CheckpointStore, StoreConfig, TierPolicy
from services.checkpoints.tiering import move_to_cold
from tests.unit.store_helpers import make_store, save
from tests.unit.test_retention import record


def tiered(tmp_path: Path, cold: str | None = None, **config: object) -> CheckpointStore:
    return make_store(tmp_path, cold_url=cold or f"file://{tmp_path / 'cold'}", **config)


def test_policy_moves_beyond_newest_n_and_older_than_age() -> None:
    rs = [record(i, i * 1000) for i in range(1, 6)]
    assert [r.seq for r in TierPolicy(keep_hot_newest=2).to_move(rs, 0)] == [1, 2, 3]
    assert [r.seq for r in TierPolicy(max_hot_age_s=2.5).to_move(rs, 5000)] == [1, 2]
    # the newest never moves, whatever its age
    assert [r.seq for r in TierPolicy(max_hot_age_s=0.001).to_move(rs, 10**9)] == [1, 2, 3, 4]


def test_moved_checkpoints_read_transparently_and_the_catalog_records_where(
    tmp_path: Path,
) -> None:
    store = tiered(tmp_path, hot_keep_newest=2)
    made = [save(store, step=i) for i in range(4)]
    tiers = {r.version: (r.tier, r.location) for r in store.query("fraud")}
    assert [tiers[m.version][0] for m in made] == ["cold", "cold", "hot", "hot"]
    assert tiers[made[0].version][1] == str(tmp_path / "cold" / "fraud" / made[0].version)
    for i, m in enumerate(made):
        assert store.open("fraud", m.version).read("model.safetensors") == b"weights-%d" % i * 10
    # A hot checkpoint referencing bytes that now live in cold still reads.
    entry = made[0].file("model.safetensors")
    assert entry is not None
    ref = entry.model_copy(update={"ref_version": made[0].version})
    new = store.commit("fraud", {"d": b"1"}, ManifestDraft(file_refs={"w": ref}))
    assert store.open("fraud", new.version).read("w") == b"weights-0" * 10


def test_memory_fsspec_cold_tier(tmp_path: Path) -> None:
    store = tiered(tmp_path, cold=f"memory://driftloop-test-{tmp_path.name}", hot_keep_newest=1)
    a = save(store, step=1)
    save(store, step=2)
    assert store.record("fraud", a.version).tier == "cold"
    store.open("fraud", a.version).verify()


def test_a_corrupt_hot_file_is_not_copied_to_cold(tmp_path: Path) -> None:
    store = tiered(tmp_path, hot_keep_newest=1, gc_after_commit=False)
    store.tiering = None
    a = save(store, step=1)
    save(store, step=2)
    (tmp_path / "hot" / "fraud" / a.version / "model.safetensors").write_bytes(b"rot")
    with pytest.raises(CheckpointCorruptError):
        move_to_cold(
            store.record("fraud", a.version), store.hot, store.storage("cold"), store.catalog
        )
    assert store.record("fraud", a.version).tier == "hot"
    assert not (tmp_path / "cold" / "fraud" / a.version / "manifest.json").exists()


def test_an_interrupted_move_is_healed_by_gc(tmp_path: Path) -> None:
    store = tiered(tmp_path, hot_keep_newest=1)
    a = save(store, step=1)
    save(store, step=2)
    # Simulate a kill after the cold copy committed and the catalog moved, before the hot
    # copy was deleted: put the hot copy back.
    shutil.copytree(tmp_path / "cold" / "fraud" / a.version, tmp_path / "hot" / "fraud" / a.version)
    (plan,) = store.gc("fraud", dry_run=True)
    assert [(x.tier, x.name) for x in plan.leftovers] == [("hot", a.version)]
    store.gc("fraud")
    assert not (tmp_path / "hot" / "fraud" / a.version).exists()
    assert store.open("fraud", a.version).tier == "cold"


def test_gc_deletes_cold_checkpoints_too(tmp_path: Path) -> None:
    store = tiered(tmp_path, hot_keep_newest=1, keep_latest=2)
    made = [save(store, step=i) for i in range(4)]
    assert [m.version for m in store.manifests("fraud")] == [made[2].version, made[3].version]
    assert not (tmp_path / "cold" / "fraud" / made[0].version).exists()


def test_a_store_without_the_cold_tier_leaves_cold_rows_alone(tmp_path: Path) -> None:
    store = tiered(tmp_path, hot_keep_newest=1)
    a = save(store, step=1)
    save(store, step=2)
    store.close()
    hot_only = CheckpointStore(StoreConfig(root=tmp_path / "hot", fsync=False, keep_latest=1))
    assert hot_only.record("fraud", a.version).tier == "cold"
    hot_only.gc("fraud")
    assert (tmp_path / "cold" / "fraud" / a.version / "manifest.json").exists()
