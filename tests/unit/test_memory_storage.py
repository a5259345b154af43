"""MemoryStorage behaves like LocalStorage wherever the writer, reader and GC can tell.

Each test runs the same store-level scenario over a local directory and over
the in-memory twin, so unit tests on the twin prove what they would prove on
disk: commits are atomic, a save in progress is invisible and left alone, GC
deletes what retention drops and quarantines damage, pins and the version
high-water mark survive, and the writer and reader compose on their own.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from schemas.errors import CheckpointError, CheckpointNotFoundError
from schemas.manifest import ManifestDraft
from services.checkpoints import (
    Catalog,
    CheckpointReader,
    CheckpointStorage,
    CheckpointWriter,
    LocalStorage,
    MemoryStorage,
    Signer,
    StoreConfig,
    TrustedKeys,
)
from services.checkpoints.index import CatalogIndex
from services.checkpoints.pins import PinBook
from services.checkpoints.store import CheckpointStore
from tests.unit.store_helpers import save


@pytest.fixture(params=["local", "memory"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> CheckpointStorage:
    if request.param == "local":
        return LocalStorage(tmp_path / "hot", fsync=False)
    return MemoryStorage()


def _store(tmp_path: Path, storage: CheckpointStorage, **config: object) -> CheckpointStore:
    config.setdefault("keep_latest", 1000)
    settings = StoreConfig(root=tmp_path / "hot", fsync=False, **config)  # type: ignore[arg-type]
    return CheckpointStore(settings, hot=storage, catalog=Catalog(":memory:"))


def test_commit_read_back_and_list(tmp_path: Path, storage: CheckpointStorage) -> None:
    store = _store(tmp_path, storage)
    versions = [save(store, step=i).version for i in range(3)]
    assert versions == ["fraud-000001", "fraud-000002", "fraud-000003"]
    assert store.open("fraud", versions[1]).read("state/optim.json") == b'{"step": 1}'
    assert storage.models() == ["fraud"]
    assert [n for n in storage.entries("fraud") if n.startswith("fraud-")] == versions
    reader = CheckpointReader(storage, trusted=store.trusted)
    assert reader.versions("fraud") == versions


def test_a_save_in_progress_is_invisible_and_gc_leaves_it_alone(
    tmp_path: Path, storage: CheckpointStorage
) -> None:
    store = _store(tmp_path, storage)
    save(store, step=0)
    pending = storage.begin("fraud", "fraud-000002")
    pending.write("model.safetensors", b"half")
    entries = storage.entries("fraud")
    assert len(entries) == 2  # the version and the save's work directory
    assert store.reader.versions("fraud") == ["fraud-000001"]
    assert store.invalid("fraud") == []  # written by this live process: not a leftover
    store.gc("fraud")
    assert storage.entries("fraud") == entries
    pending.abort()
    assert storage.entries("fraud") == ["fraud-000001"]


def test_gc_deletes_dropped_versions_and_ids_are_never_reused(
    tmp_path: Path, storage: CheckpointStorage
) -> None:
    store = _store(tmp_path, storage, keep_latest=1)
    for i in range(3):
        save(store, step=i)
    assert [r.version for r in store.query("fraud")] == ["fraud-000003"]
    for v in ("fraud-000001", "fraud-000002"):
        assert storage.read_manifest("fraud", v) is None
    storage.remove_entry("fraud", "fraud-000003")  # even with every directory gone
    assert save(store, step=3).version == "fraud-000004"


def test_corrupt_manifests_are_quarantined_with_their_reason(
    tmp_path: Path, storage: CheckpointStorage
) -> None:
    store = _store(tmp_path, storage)
    save(store, step=0)
    save(store, step=1)
    pending = storage.begin("fraud", "fraud-000009")
    pending.finalize(b"{not json")
    store.gc("fraud")
    [q] = store.quarantined("fraud")
    assert q.name.startswith("fraud-000009-")
    assert "manifest does not validate" in q.reason
    assert store.reader.is_quarantined("fraud", "fraud-000009")
    store.purge_quarantine("fraud")
    assert store.quarantined("fraud") == []


def test_pins_live_in_the_storage(tmp_path: Path, storage: CheckpointStorage) -> None:
    store = _store(tmp_path, storage, keep_latest=1)
    first = save(store, step=0).version
    store.pin("fraud", first, "prod-1")
    save(store, step=1)
    save(store, step=2)
    assert [r.version for r in store.query("fraud")] == [first, "fraud-000003"]
    again = _store(tmp_path, storage)  # a fresh catalog: pins come back from storage
    assert again.record("fraud", first).pins == ("prod-1",)


def test_a_read_only_memory_storage_refuses_writes() -> None:
    memory = MemoryStorage(read_only=True)
    with pytest.raises(CheckpointError, match="read-only"):
        memory.begin("fraud", "fraud-000001")
    with pytest.raises(CheckpointError, match="read-only"):
        memory.write_meta("fraud", ".seq", b"1")
    assert memory.writes == 2
    assert memory.models() == []


def test_writer_and_reader_compose_without_the_facade(storage: CheckpointStorage) -> None:
    """The pieces stand alone: a writer over injected storage, a reader over the same."""
    signer = Signer.generate()
    trusted = TrustedKeys([signer.public_key])
    catalog = Catalog(":memory:")
    lock = threading.RLock()
    index = CatalogIndex(catalog, {"hot": storage}, PinBook(storage, catalog), lock)
    writer = CheckpointWriter(
        storage,
        index=index,
        reader=CheckpointReader(storage, trusted=trusted, index=index),
        signer=signer,
        trusted=trusted,
        lock=lock,
        root=storage.url,
    )
    manifest = writer.commit("fraud", {"w.bin": b"abc"}, ManifestDraft(step=1, trigger="count"))
    assert [r.version for r in catalog.query("fraud")] == [manifest.version]

    reader = CheckpointReader(storage, trusted=trusted)  # manifests only, no catalog
    assert reader.verify("fraud", manifest.version) == manifest
    assert reader.open("fraud").read("w.bin") == b"abc"
    with pytest.raises(CheckpointNotFoundError):
        reader.open("fraud", "fraud-000002")
    stranger = CheckpointReader(storage, trusted=TrustedKeys([Signer.generate().public_key]))
    with pytest.raises(CheckpointError, match="key"):
        stranger.verify("fraud", manifest.version)
