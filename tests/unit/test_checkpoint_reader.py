"""The read-only CheckpointReader: list, verify and load versions without writing anything.

What model servers and the CLI's checks rely on: ``open_reader`` over a store
directory lists every committed version, verifies it (signature first, then
every file's hash, then its dependencies) and loads its state into an
adapter, and leaves the store byte for byte as it found it — no catalog, no
lock file, no directory. Damage is reported with the path and the hashes.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from schemas.errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointNotFoundError,
    CheckpointSignatureError,
)
from schemas.manifest import CheckpointManifest, decode_manifest, encode_manifest
from services.checkpoints import Catalog, CheckpointReader, MemoryStorage, StoreConfig
from services.checkpoints.checkpointer import Checkpointer, CheckpointerConfig
from services.checkpoints.opener import open_reader, open_store
from services.checkpoints.state.torch_state import TorchAdapter
from services.checkpoints.store import CheckpointStore

MODEL = "fraud"


def _config(tmp_path: Path) -> StoreConfig:
    return StoreConfig(root=tmp_path / "store", fsync=False, keep_latest=1000)


def _fill(store: CheckpointStore, saves: int = 5) -> dict[str, torch.Tensor]:
    """Commit ``saves`` checkpoints (full, then deltas on it); returns each version's weight."""
    fixed = CheckpointerConfig(async_saves=False, full_every=3, full_after_fraction=None)
    checkpointer = Checkpointer(store, fixed)  # a chain of 3 deltas however few bytes they save
    module = torch.nn.Linear(8, 4)
    weights: dict[str, torch.Tensor] = {}
    for step in range(saves):
        with torch.no_grad():
            module.weight[step % 4] += 1.0
        manifest = checkpointer.save(MODEL, TorchAdapter(module), step=step).result()
        weights[manifest.version] = module.weight.detach().clone()
    return weights


def _tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``root`` with its size, mtime and mode: any write changes it."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            st = (Path(folder) / name).lstat()
            out[str(Path(folder, name).relative_to(root))] = (
                st.st_size,
                st.st_mtime_ns,
                st.st_mode,
            )
    st = root.lstat()
    out["."] = (0, st.st_mtime_ns, st.st_mode)
    return out


def _read_everything(reader: CheckpointReader) -> list[str]:
    """What a server or the CLI does with a reader: list, verify, load every version."""
    versions = reader.versions(MODEL)
    assert reader.models() == [MODEL]
    for version in versions:
        reader.verify(MODEL, version, deep=True)
        assert reader.manifest(MODEL, version).version == version
        assert not reader.is_quarantined(MODEL, version)
        reader.load(MODEL, version)
    assert reader.quarantined(MODEL) == []
    assert reader.open(MODEL).manifest.version == versions[-1]
    return versions


@pytest.fixture
def written(tmp_path: Path) -> tuple[StoreConfig, dict[str, torch.Tensor]]:
    config = _config(tmp_path)
    with CheckpointStore(config) as store:
        weights = _fill(store)
    return config, weights


@pytest.fixture
def frozen(written: tuple[StoreConfig, dict[str, torch.Tensor]]) -> Iterator[Path]:
    """The store of ``written`` without its catalog, made read-only (files and directories)."""
    root = written[0].root
    for p in root.glob("catalog.sqlite3*"):
        p.unlink()
    paths = [Path(d) for d, _, _ in os.walk(root)]
    files = [Path(d, f) for d, _, fs in os.walk(root) for f in fs]
    for f in files:
        f.chmod(stat.S_IRUSR | stat.S_IRGRP)
    for d in paths:
        d.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    try:
        yield root
    finally:
        for d in paths:
            d.chmod(stat.S_IRWXU)
        for f in files:
            f.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_a_reader_lists_verifies_and_loads_every_version_and_writes_nothing(
    written: tuple[StoreConfig, dict[str, torch.Tensor]], frozen: Path
) -> None:
    config, weights = written
    before = _tree(frozen)  # chmod stops a non-root writer; the snapshot catches root too
    with open_reader(config) as reader:
        assert _read_everything(reader) == sorted(weights)
        kinds = {reader.manifest(MODEL, v).kind for v in weights}
        assert kinds == {"full", "delta"}  # chains were followed, not only full saves
    assert _tree(frozen) == before
    assert not (frozen / "catalog.sqlite3").exists()


def test_state_loads_into_an_adapter_read_only(
    written: tuple[StoreConfig, dict[str, torch.Tensor]],
) -> None:
    config, weights = written
    reader = open_reader(config)
    for version, weight in weights.items():
        fresh = torch.nn.Linear(8, 4)
        manifest = reader.restore(MODEL, TorchAdapter(fresh), version)
        assert manifest.version == version
        assert torch.equal(fresh.weight, weight)
    assert torch.equal(reader.load(MODEL).state.groups["model"]["weight"], weights[max(weights)])


def test_the_reader_never_calls_a_write_of_its_storage(tmp_path: Path) -> None:
    memory = MemoryStorage()
    config = _config(tmp_path)
    with CheckpointStore(config, hot=memory, catalog=Catalog(":memory:")) as store:
        weights = _fill(store)
        trusted = store.trusted
    memory.read_only, memory.writes = True, 0
    # Not wrapped in ReadOnlyStorage: any write the reader tried would reach the counter.
    assert _read_everything(CheckpointReader(memory, trusted=trusted)) == sorted(weights)
    assert _read_everything(open_reader(config, hot=memory)) == sorted(weights)
    assert memory.writes == 0
    assert not config.root.exists()


def test_a_writing_store_would_fail_the_same_check(
    written: tuple[StoreConfig, dict[str, torch.Tensor]],
) -> None:
    """The snapshot check can fail: a writable store re-creates its catalog on open."""
    config, _ = written
    for p in config.root.glob("catalog.sqlite3*"):
        p.unlink()
    before = _tree(config.root)
    with open_store(config, None) as store:
        store.query(MODEL)
    assert _tree(config.root) != before


def test_open_reader_on_a_missing_store_raises_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint store"):
        open_reader(_config(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_verify_names_the_path_and_hashes_of_a_damaged_file(tmp_path: Path) -> None:
    memory = MemoryStorage()
    store = CheckpointStore(_config(tmp_path), hot=memory, catalog=Catalog(":memory:"))
    weights = _fill(store, saves=3)
    base, child, grandchild = sorted(weights)
    reader = CheckpointReader(memory, trusted=store.trusted)
    assert reader.manifest(MODEL, child).dependencies() >= {base}
    files = memory.models_[MODEL][base]
    name = next(n for n in files if n.endswith(".safetensors"))
    files[name] = bytes([files[name][0] ^ 1]) + files[name][1:]

    for version in (base, grandchild):  # the damage breaks every version built on it
        with pytest.raises(CheckpointCorruptError) as info:
            reader.verify(MODEL, version)
        context = info.value.context
        assert context["path"] == f"memory://store/{MODEL}/{base}/{name}"
        assert context["version"] == base
        assert context["expected_sha256"] != context["actual_sha256"]


def test_verify_refuses_a_manifest_changed_after_signing(tmp_path: Path) -> None:
    memory = MemoryStorage()
    store = CheckpointStore(_config(tmp_path), hot=memory, catalog=Catalog(":memory:"))
    version = max(_fill(store, saves=1))
    files = memory.models_[MODEL][version]
    tampered = decode_manifest(files["manifest.json"]).model_copy(update={"step": 999})
    files["manifest.json"] = encode_manifest(tampered)
    reader = CheckpointReader(memory, trusted=store.trusted)
    assert reader.versions(MODEL) == [version]  # listed: the manifest validates
    with pytest.raises(CheckpointSignatureError) as info:
        reader.verify(MODEL, version)
    assert info.value.context["reason"] == "bad_signature"
    assert info.value.context["path"] == f"memory://store/{MODEL}/{version}"


def test_quarantined_and_absent_versions_are_not_verifiable(tmp_path: Path) -> None:
    memory = MemoryStorage()
    store = CheckpointStore(_config(tmp_path), hot=memory, catalog=Catalog(":memory:"))
    checkpointer = Checkpointer(store, CheckpointerConfig(async_saves=False, delta=False))
    module = torch.nn.Linear(2, 1)
    versions = [checkpointer.save(MODEL, TorchAdapter(module), step=i).result() for i in range(2)]
    damaged = versions[0].version
    memory.models_[MODEL][damaged]["manifest.json"] = b"{not json"
    store.gc(MODEL)  # moves the version with the corrupt manifest to quarantine

    reader = CheckpointReader(memory, trusted=store.trusted)
    assert reader.versions(MODEL) == [versions[1].version]
    assert reader.is_quarantined(MODEL, damaged)
    assert not reader.is_quarantined(MODEL, versions[1].version)
    with pytest.raises(CheckpointNotFoundError, match="quarantined: manifest does not validate"):
        reader.verify(MODEL, damaged)
    with pytest.raises(CheckpointNotFoundError) as info:
        reader.verify(MODEL, f"{MODEL}-000099")
    assert info.value.context["version"] == f"{MODEL}-000099"
    reader.verify(MODEL, versions[1].version, deep=True)


def test_a_reader_over_read_only_tiers_refuses_writes_it_is_asked_for(
    written: tuple[StoreConfig, dict[str, torch.Tensor]],
) -> None:
    config, weights = written
    reader = open_reader(config)
    with pytest.raises(CheckpointError, match="read-only"):
        reader.hot.begin(MODEL, f"{MODEL}-000100")
    assert reader.versions(MODEL) == sorted(weights)


def test_the_store_reads_through_the_same_reader(
    written: tuple[StoreConfig, dict[str, torch.Tensor]],
) -> None:
    """A read-only store (the CLI's) verifies with the reader the model servers use."""
    config, weights = written
    with open_store(config, None, read_only=True) as store:
        assert isinstance(store.reader, CheckpointReader)
        assert [r.version for r in store.query(MODEL)] == sorted(weights)
        manifest: CheckpointManifest = store.reader.verify(MODEL, max(weights), deep=True)
        assert manifest.version == max(weights)


@pytest.mark.parametrize("version", ["../other/fraud-000001", "fraud-000001/..", "other-000001"])
def test_a_version_that_is_not_an_id_of_the_model_is_refused_before_any_read(
    tmp_path: Path, version: str
) -> None:
    memory = MemoryStorage()
    store = CheckpointStore(_config(tmp_path), hot=memory, catalog=Catalog(":memory:"))
    _fill(store, saves=1)
    memory.models_["other"] = {"other-000001": dict(memory.models_[MODEL]["fraud-000001"])}
    reader = CheckpointReader(memory, trusted=store.trusted)
    with pytest.raises(CheckpointNotFoundError, match="not a version id of fraud"):
        reader.verify(MODEL, version)
