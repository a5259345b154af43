"""Committing, reading and verifying checkpoints through CheckpointStore."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from schemas.errors import (
    CheckpointCorruptError,
    CheckpointNotFoundError,
    ConfigError,
    SchemaError,
)
from schemas.manifest import FileEntry, ManifestDraft
from services.checkpoints import CheckpointStore, StoreConfig
from services.checkpoints.storage import CHUNK
from tests.unit.store_helpers import make_store, save


def test_commit_then_open_returns_the_same_bytes_and_manifest(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    m = save(
        store,
        step=45000,
        metrics={"logloss": 0.321},
        key_metric="logloss",
        offsets={"training-examples": {"0": 99}},
        trigger="drift",
    )
    assert m.version == "fraud-000001"
    assert m.label == "fraud-000001 step=45000 drift logloss=0.3210"
    reader = store.open("fraud")
    assert reader.manifest == m
    assert sorted(reader.names()) == ["model.safetensors", "state/optim.json"]
    assert reader.read("state/optim.json") == b'{"step": 45000}'
    on_disk = tmp_path / "hot" / "fraud" / "fraud-000001" / "manifest.json"
    assert on_disk.is_file()
    entry = m.file("model.safetensors")
    assert entry is not None
    assert entry.sha256 == hashlib.sha256(b"weights-45000" * 10).hexdigest()


def test_versions_increase_and_listings_are_oldest_first(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    versions = [save(store, step=i).version for i in range(3)]
    assert versions == ["fraud-000001", "fraud-000002", "fraud-000003"]
    assert [m.version for m in store.manifests("fraud")] == versions
    latest = store.latest("fraud")
    assert latest is not None
    assert latest.version == "fraud-000003"
    assert store.latest("other") is None


def test_version_ids_are_never_reused_after_deletion_and_catalog_loss(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    for i in range(3):
        save(store, step=i)
    store.close()
    # The newest two directories and the catalog disappear.
    shutil.rmtree(tmp_path / "hot" / "fraud" / "fraud-000003")
    shutil.rmtree(tmp_path / "hot" / "fraud" / "fraud-000002")
    (tmp_path / "hot" / "catalog.sqlite3").unlink()
    store = make_store(tmp_path)
    assert save(store, step=9).version == "fraud-000004"
    # Even with the high-water file gone, directories present still bound the sequence.
    (tmp_path / "hot" / "fraud" / ".seq").unlink()
    assert save(store, step=10).version == "fraud-000005"


def test_two_store_objects_on_one_directory_never_share_a_version(tmp_path: Path) -> None:
    a, b = make_store(tmp_path), make_store(tmp_path)
    seen = [save(a, step=1).version, save(b, step=2).version, save(a, step=3).version]
    assert len(set(seen)) == 3
    assert [m.version for m in b.manifests("fraud")] == sorted(seen)


def test_a_corrupt_file_is_refused_with_path_and_both_hashes(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    m = save(store)
    path = tmp_path / "hot" / "fraud" / m.version / "model.safetensors"
    path.write_bytes(b"X" + path.read_bytes()[1:])
    with pytest.raises(CheckpointCorruptError) as info:
        store.open("fraud").read("model.safetensors")
    ctx = info.value.context
    assert ctx["path"] == str(path)
    assert ctx["expected_sha256"] == m.file("model.safetensors").sha256  # type: ignore[union-attr]
    assert ctx["actual_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert str(path) in str(info.value)


def test_a_truncated_or_missing_file_is_refused(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    m = save(store)
    d = tmp_path / "hot" / "fraud" / m.version
    (d / "model.safetensors").write_bytes(b"short")
    with pytest.raises(CheckpointCorruptError, match="does not match"):
        store.open("fraud").read("model.safetensors")
    (d / "state" / "optim.json").unlink()
    with pytest.raises(CheckpointCorruptError, match="missing"):
        store.open("fraud").verify()


def test_a_checkpoint_with_a_corrupt_manifest_is_invisible(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    save(store, step=1)
    bad = save(store, step=2)
    (tmp_path / "hot" / "fraud" / bad.version / "manifest.json").write_bytes(b'{"model": ')
    fresh = make_store(tmp_path / "x")  # unrelated store keeps working
    fresh.close()
    store.reindex()
    assert [m.version for m in store.manifests("fraud")] == ["fraud-000001"]
    assert store.open("fraud").manifest.version == "fraud-000001"
    with pytest.raises(CheckpointNotFoundError):
        store.open("fraud", bad.version)
    reasons = {x.name: x.reason for x in store.invalid("fraud")}
    assert "manifest does not validate" in reasons[bad.version]


def test_uncommitted_directories_are_never_listed_and_gc_removes_them(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    save(store, step=1)
    model_dir = tmp_path / "hot" / "fraud"
    dead = model_dir / ".tmp-999999999-dead"  # a writer pid that cannot exist
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"partial")
    no_manifest = model_dir / "fraud-000007"
    no_manifest.mkdir()
    (no_manifest / "model.safetensors").write_bytes(b"partial")
    live = model_dir / f".tmp-{os.getpid()}-live"  # a save in progress in this process
    live.mkdir()
    fresh = make_store(tmp_path)
    assert [m.version for m in fresh.manifests("fraud")] == ["fraud-000001"]
    (plan,) = fresh.gc("fraud", dry_run=True)
    assert {x.name for x in plan.leftovers} == {dead.name, no_manifest.name}
    assert dead.exists()
    fresh.gc("fraud")
    assert not dead.exists()
    assert not no_manifest.exists()
    assert live.exists()
    # The seq of the removed directory is still never reused.
    assert save(fresh, step=2).version == "fraud-000008"


def test_file_refs_reuse_bytes_of_an_older_checkpoint(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    first = save(store, step=1)
    entry = first.file("model.safetensors")
    assert entry is not None
    ref = entry.model_copy(update={"ref_version": first.version})
    second = store.commit(
        "fraud", {"delta.bin": b"d1"}, ManifestDraft(step=2, file_refs={"weights": ref})
    )
    # A third checkpoint referencing the second's reference is flattened to the holder.
    ref2 = second.file("weights")
    assert ref2 is not None
    third = store.commit("fraud", {"delta.bin": b"d2"}, ManifestDraft(file_refs={"w": ref2}))
    assert third.file("w").ref_version == first.version  # type: ignore[union-attr]
    assert not (tmp_path / "hot" / "fraud" / second.version / "weights").exists()
    assert store.open("fraud", third.version).read("w") == b"weights-1" * 10
    assert third.dependencies() == {first.version}


def test_file_refs_to_bytes_that_do_not_exist_are_refused(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    first = save(store)
    bogus = FileEntry(name="x", sha256="0" * 64, size=3, ref_version=first.version)
    with pytest.raises(CheckpointNotFoundError):
        store.commit("fraud", {}, ManifestDraft(file_refs={"x": bogus}))
    missing = FileEntry(name="x", sha256="0" * 64, size=3, ref_version="fraud-000099")
    with pytest.raises(CheckpointNotFoundError):
        store.commit("fraud", {}, ManifestDraft(file_refs={"x": missing}))
    assert [m.version for m in store.manifests("fraud")] == [first.version]


def test_an_unsafe_file_name_commits_nothing_and_leaves_no_directory(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    with pytest.raises(SchemaError, match="file name"):
        store.commit("fraud", {"../escape": b"x"}, ManifestDraft())
    assert store.manifests("fraud") == []
    model_dir = tmp_path / "hot" / "fraud"
    assert not model_dir.exists() or [p for p in model_dir.iterdir() if p.is_dir()] == []


def test_unknown_model_and_version_raise_not_found(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    with pytest.raises(CheckpointNotFoundError):
        store.open("nothing")
    save(store)
    with pytest.raises(CheckpointNotFoundError) as info:
        store.open("fraud", "fraud-000777")
    assert info.value.context["version"] == "fraud-000777"


def test_cold_tier_on_an_fsspec_url_is_read_transparently(tmp_path: Path) -> None:
    cold = f"file://{tmp_path / 'cold'}"
    store = CheckpointStore(
        StoreConfig(root=tmp_path / "hot", cold_url=cold, hot_keep_newest=1, fsync=False)
    )
    a = save(store, step=1)
    save(store, step=2)
    rec = store.record("fraud", a.version)
    assert rec.tier == "cold"
    assert rec.location == str(tmp_path / "cold" / "fraud" / a.version)
    assert not (tmp_path / "hot" / "fraud" / a.version).exists()
    assert store.open("fraud", a.version).read("model.safetensors") == b"weights-1" * 10


def test_config_comes_from_driftloop_store_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRIFTLOOP_STORE_ROOT", str(tmp_path / "from-env"))
    monkeypatch.setenv("DRIFTLOOP_STORE_KEEP_LATEST", "2")
    config = StoreConfig()
    assert config.catalog_file == tmp_path / "from-env" / "catalog.sqlite3"
    store = CheckpointStore(config.model_copy(update={"fsync": False}))
    for step in range(4):
        save(store, step=step)
    assert [m.version for m in store.manifests("fraud")] == ["fraud-000003", "fraud-000004"]


def test_an_unusable_cold_url_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cold tier"):
        CheckpointStore(StoreConfig(root=tmp_path, cold_url="nosuchscheme://bucket/x"))


def test_a_buffer_read_hashes_while_reading_and_refuses_damage_in_any_chunk(
    tmp_path: Path,
) -> None:
    store = make_store(tmp_path)
    data = os.urandom(3 * CHUNK + 7)  # several chunks and a short last one
    m = store.commit("fraud", {"big.bin": data}, ManifestDraft(step=1))
    assert bytes(store.open("fraud").read_buffer("big.bin")) == data
    path = tmp_path / "hot" / "fraud" / m.version / "big.bin"
    for at in (0, CHUNK, len(data) - 1):  # first, a middle and the last chunk
        damaged = bytearray(data)
        damaged[at] ^= 1
        path.write_bytes(bytes(damaged))
        with pytest.raises(CheckpointCorruptError) as info:
            store.open("fraud").read_buffer("big.bin")
        ctx = info.value.context
        assert ctx["path"] == str(path)
        assert ctx["expected_sha256"] == hashlib.sha256(data).hexdigest()
        assert ctx["actual_sha256"] == hashlib.sha256(damaged).hexdigest()
