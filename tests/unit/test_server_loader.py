"""The server's store loader: read-only, verified before any state is read, and it
finds versions committed after it opened the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from river import datasets

from schemas.errors import CheckpointError, CheckpointSignatureError
from services.checkpoints.checkpointer import Checkpointer, CheckpointerConfig
from services.checkpoints.config import StoreConfig
from services.checkpoints.signing import generate_key_file
from services.checkpoints.store import CheckpointStore
from services.learning.config import LearningConfig, example_path, load_config
from services.learning.store_sink import CheckpointerSink
from services.learning.synthetic import examples_from
from services.learning.trainer import OnlineTrainer
from services.server.loader import StoreLoader

LEARNING = load_config(example_path("river_logreg"))
MODEL = "river-logreg"


def _write(store: StoreConfig, n: int = 1) -> list[str]:
    sink = CheckpointerSink(
        Checkpointer(CheckpointStore(store), CheckpointerConfig(async_saves=False))
    )
    trainer = OnlineTrainer(LEARNING.model(MODEL), sink)
    versions = []
    for i, ex in enumerate(examples_from(datasets.Phishing(), MODEL, limit=64 * n)):
        trainer.process(ex, topic="t", partition=0, offset=i)
        if (i + 1) % 64 == 0:
            versions.append(trainer.checkpoint("manual").version)
    return versions


def test_a_version_committed_after_the_loader_opened_is_found(tmp_path: Path) -> None:
    config = StoreConfig(root=tmp_path / "store", fsync=False)
    (first,) = _write(config)
    loader = StoreLoader(config, LEARNING)
    loader.load(MODEL, first)
    later = _write(config, 2)[-1]  # a second trainer run: versions after the catalog was read
    assert later != first
    assert loader.load(MODEL, later).predict_many([{"a": 1.0}])


def test_the_loader_never_writes_to_the_store(tmp_path: Path) -> None:
    config = StoreConfig(root=tmp_path / "store", fsync=False)
    (version,) = _write(config)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    loader = StoreLoader(config, LEARNING)
    loader.load(MODEL, version)
    loader.close()
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


def test_a_checkpoint_signed_by_an_untrusted_key_is_refused_before_any_state_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other.pem"
    generate_key_file(other)
    writer = StoreConfig(root=tmp_path / "store", fsync=False, signing_key_file=other)
    (version,) = _write(writer)
    read: list[Any] = []
    from services.checkpoints.files import CheckpointFiles

    for method in ("read", "read_buffer"):
        original = getattr(CheckpointFiles, method)

        def spy(self: Any, name: str, _original: Any = original) -> Any:
            read.append(name)
            return _original(self, name)

        monkeypatch.setattr(CheckpointFiles, method, spy)
    loader = StoreLoader(StoreConfig(root=tmp_path / "store", fsync=False), LEARNING)
    with pytest.raises(CheckpointSignatureError) as info:
        loader.load(MODEL, version)
    assert info.value.context.get("reason") == "unknown_key" or "unknown_key" in str(info.value)
    assert read == []


def test_an_unknown_version_is_a_checkpoint_error(tmp_path: Path) -> None:
    config = StoreConfig(root=tmp_path / "store", fsync=False)
    _write(config)
    loader = StoreLoader(config, LEARNING)
    with pytest.raises(CheckpointError):
        loader.load(MODEL, "river-logreg-000099")


def test_a_model_not_configured_is_refused(tmp_path: Path) -> None:
    config = StoreConfig(root=tmp_path / "store", fsync=False)
    (version,) = _write(config)
    loader = StoreLoader(config, LearningConfig())
    with pytest.raises(Exception, match="no such model"):
        loader.load(MODEL, version)
