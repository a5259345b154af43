"""The state digest covers the river blob, so it tells river states apart and catches changes.

Before this change river manifests carried ``tf1:`` + the sha256 of nothing,
the same for every river state, so the digest proved nothing about the
pickled model: the first two tests fail on main. Old ``tf1:`` manifests are
still checked (tensors only) and load.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import orjson
import pytest
from river import linear_model

from schemas.errors import CheckpointCorruptError
from schemas.manifest import CheckpointManifest, ManifestDraft
from services.checkpoints.checkpointer import Checkpointer, CheckpointerConfig
from services.checkpoints.state.river_state import RIVER_BLOB, RiverAdapter
from services.checkpoints.state.state import compose_digest_v1, state_digest
from services.checkpoints.state.writer import EncodeOptions, encode_save
from services.checkpoints.store import CheckpointStore
from tests.unit.store_helpers import make_store, resign


def trained(n: int) -> linear_model.LogisticRegression:
    model = linear_model.LogisticRegression()
    for i in range(n):
        model.learn_one({"x": float(i % 7), "y": float(i % 3)}, i % 2 == 0)
    return model


def rewrite_blob(store: CheckpointStore, m: CheckpointManifest, data: bytes) -> None:
    """Replace the river blob of ``m`` and make the manifest's file entry agree with it
    (leaving the state digest alone) and sign it again, as a writer bug would."""
    folder = store.config.root / m.model / m.version
    (name,) = [f.name for f in m.files if f.name.startswith("blobs/")]
    (folder / name).write_bytes(data)
    raw = orjson.loads((folder / "manifest.json").read_bytes())
    for f in raw["files"]:
        if f["name"] == name:
            f.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    (folder / "manifest.json").write_bytes(orjson.dumps(raw))
    resign(store, m.model, m.version)  # a writer bug holds the key: only the digest can tell


def test_different_river_states_get_different_digests(tmp_path: Path) -> None:
    # A fixed cadence: b's rewritten blob would otherwise end the chain (c full).
    config = CheckpointerConfig(async_saves=False, full_after_fraction=None)
    checkpointer = Checkpointer(make_store(tmp_path), config)
    a = checkpointer.save("r", RiverAdapter({"model": trained(10)}), step=1).result()
    b = checkpointer.save("r", RiverAdapter({"model": trained(50)}), step=2).result()
    assert a.state_digest is not None
    assert a.state_digest.startswith("tf2:")
    assert a.state_digest != b.state_digest
    # An unchanged state saved again (its blob referenced from the parent) keeps its digest.
    c = checkpointer.save("r", RiverAdapter({"model": trained(50)}), step=3).result()
    assert c.kind == "delta"
    (blob,) = [f for f in c.files if f.name.startswith("blobs/")]
    assert blob.ref_version == b.version, "the unchanged blob is referenced, not rewritten"
    assert c.state_digest == b.state_digest
    expected = RiverAdapter({"model": trained(50)}, capture_rngs=False).capture()
    assert b.state_digest == state_digest(expected)


def test_river_blob_changed_after_save_is_refused_when_verifying(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    checkpointer = Checkpointer(store, CheckpointerConfig(async_saves=False))
    m = checkpointer.save("r", RiverAdapter({"model": trained(10)}), step=1).result()
    other = pickle.dumps({"model": trained(40)}, protocol=5)
    rewrite_blob(store, m, other)
    with pytest.raises(CheckpointCorruptError, match="state digest"):
        checkpointer.load("r", m.version)
    unverified = Checkpointer(store, CheckpointerConfig(async_saves=False, verify_on_load=False))
    assert unverified.load("r", m.version).state.blobs[RIVER_BLOB] == other


def test_old_tf1_river_manifests_still_load(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    state = RiverAdapter({"model": trained(10)}, capture_rngs=False).capture()
    files = encode_save(state, parent=None, options=EncodeOptions()).files
    old = store.commit("r", files, ManifestDraft(state_digest=compose_digest_v1({})))
    loaded = Checkpointer(store).load("r", old.version)
    assert loaded.state.blobs[RIVER_BLOB] == state.blobs[RIVER_BLOB]
    wrong = store.commit("r", files, ManifestDraft(state_digest=compose_digest_v1({"x": "0"})))
    with pytest.raises(CheckpointCorruptError, match="state digest"):
        Checkpointer(store).load("r", wrong.version)
