"""The restricted unpickler: river state loads, anything else is refused before it runs."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
from pathlib import Path

import pytest

from schemas.errors import CheckpointCorruptError, UnsafePickleError
from services.checkpoints.checkpointer import Checkpointer, CheckpointerConfig
from services.checkpoints.config import StoreConfig
from services.checkpoints.state.river_state import RIVER_BLOB, RiverAdapter
from services.checkpoints.state.safe_pickle import safe_loads
from services.checkpoints.state.state import CheckpointState
from services.checkpoints.store import CheckpointStore


class _Reduce:
    """Pickles as a call of ``func(*args)`` — what an attacker's pickle looks like."""

    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.func, self.args


def crafted(module: str, name: str, arg: str) -> bytes:
    """Protocol-0 pickle calling ``module.name(arg)``, written opcode by opcode."""
    return f"c{module}\n{name}\n(V{arg}\ntR.".encode()


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("os", "system"),
        ("posix", "system"),
        ("builtins", "eval"),
        ("subprocess", "Popen"),
        ("builtins", "__import__"),
        ("importlib", "import_module"),
    ],
)
def test_hand_crafted_pickle_naming_a_dangerous_global_is_refused(
    module: str, name: str, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(UnsafePickleError, match=re.escape(f"{module}.{name}")) as info:
        safe_loads(crafted(module, name, f"touch {marker}"), source="evil.pkl")
    assert not marker.exists()
    assert info.value.context["name"] == f"{module}.{name}"
    assert info.value.context["path"] == "evil.pkl"


def test_reduce_pickles_built_with_pickle_dumps_are_refused(tmp_path: Path) -> None:
    for payload in (_Reduce(os.system, "true"), _Reduce(subprocess.Popen, ["true"])):
        with pytest.raises(UnsafePickleError, match="outside the allow-list"):
            safe_loads(pickle.dumps({"model": payload}))


def test_river_module_cannot_be_used_to_reach_what_it_imported() -> None:
    # river.datasets.base imports os; protocol 4 resolves dotted names through it.
    import river.datasets.base as base

    assert hasattr(base, "os")
    data = b"\x80\x04\x8c\x13river.datasets.base\x8c\tos.system\x93\x8c\x04true\x85R."
    with pytest.raises(UnsafePickleError):
        safe_loads(data)


def test_getattr_cannot_reach_dunders_or_modules() -> None:
    from river import linear_model

    dunder = _Reduce(getattr, linear_model.LogisticRegression, "__init__")
    with pytest.raises(UnsafePickleError, match="getattr outside the allow-list"):
        safe_loads(pickle.dumps(dunder))


def test_garbage_is_refused_cleanly() -> None:
    with pytest.raises(UnsafePickleError):
        safe_loads(b"not a pickle")


def test_crafted_river_blob_in_a_committed_checkpoint_is_refused_on_load(tmp_path: Path) -> None:
    store = CheckpointStore(StoreConfig(root=tmp_path / "store", fsync=False))
    checkpointer = Checkpointer(store, CheckpointerConfig(async_saves=False))
    evil = CheckpointState(blobs={RIVER_BLOB: crafted("os", "system", "true")})
    checkpointer.save("fraud", evil, step=1)
    loaded = checkpointer.load("fraud")  # bytes are verified, but not unpickled yet
    with pytest.raises(UnsafePickleError, match=r"os\.system"):
        loaded.restore(RiverAdapter({}))


def test_tampered_river_blob_is_refused_before_unpickling(tmp_path: Path) -> None:
    from river import linear_model

    store = CheckpointStore(StoreConfig(root=tmp_path / "store", fsync=False))
    checkpointer = Checkpointer(store, CheckpointerConfig(async_saves=False))
    manifest = checkpointer.save(
        "fraud", RiverAdapter({"model": linear_model.LogisticRegression()}), step=1
    ).result()
    blob = next(p for p in (tmp_path / "store").rglob("*.pkl"))
    blob.write_bytes(crafted("os", "system", "true").ljust(blob.stat().st_size, b" "))
    with pytest.raises(CheckpointCorruptError) as info:
        checkpointer.load("fraud", manifest.version)
    assert "pkl" in str(info.value)
