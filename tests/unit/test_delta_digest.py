"""The state digest still catches a wrong state when every file's hash is right.

Loads take a tensor's digest from its verified file's sha256 and hash only
tensors rebuilt from rows; these tests rewrite checkpoints *and* their
manifests consistently, signed with the writer's key (what a bug in the writer
would produce) and check the load refuses them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pytest
import torch

from schemas.errors import CheckpointCorruptError
from schemas.manifest import CheckpointManifest
from services.checkpoints.checkpointer import Checkpointer, CheckpointerConfig
from services.checkpoints.state.encoding import INDEX_NAME, encode_tensors
from services.checkpoints.state.torch_state import TorchAdapter
from services.checkpoints.store import CheckpointStore
from tests.unit.store_helpers import make_store, resign


def rewrite(store: CheckpointStore, m: CheckpointManifest, name: str, data: bytes) -> None:
    """Replace file ``name`` of ``m`` and make its (signed) manifest agree with the new bytes."""
    folder = store.config.root / m.model / m.version
    (folder / name).write_bytes(data)
    raw = orjson.loads((folder / "manifest.json").read_bytes())
    for f in raw["files"]:
        if f["name"] == name:
            f.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    (folder / "manifest.json").write_bytes(orjson.dumps(raw))
    resign(store, m.model, m.version)


def test_a_wrong_reconstruction_with_consistent_hashes_is_refused(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    emb = torch.nn.Embedding(400, 4)
    checkpointer = Checkpointer(store, CheckpointerConfig(async_saves=False))
    checkpointer.save("e", TorchAdapter(emb), step=0)
    with torch.no_grad():
        emb.weight[[3, 9]] += 1.0
    top = checkpointer.save("e", TorchAdapter(emb), step=1).result()
    assert top.kind == "delta"
    (rows,) = [f.name for f in top.files if f.name.startswith("rows/")]
    wrong = encode_tensors({"indices": torch.tensor([3, 9]), "value": torch.zeros(2, 4)})
    rewrite(store, top, rows, wrong)
    with pytest.raises(CheckpointCorruptError, match="state digest"):
        checkpointer.load("e", top.version)


def test_tensors_swapped_between_verified_files_are_refused(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    net = torch.nn.Linear(3, 3)
    checkpointer = Checkpointer(store, CheckpointerConfig(async_saves=False, delta=False))
    m = checkpointer.save("n", TorchAdapter(net), step=0).result()
    assert checkpointer.load("n").state.groups["model"]["bias"].shape == (3,)
    index = orjson.loads(store.open("n").read(INDEX_NAME))
    entries = index["tensors"]
    entries["model/weight"]["file"], entries["model/bias"]["file"] = (
        entries["model/bias"]["file"],
        entries["model/weight"]["file"],
    )
    rewrite(store, m, INDEX_NAME, orjson.dumps(index, option=orjson.OPT_SORT_KEYS))
    with pytest.raises(CheckpointCorruptError, match="state digest"):
        checkpointer.load("n")
