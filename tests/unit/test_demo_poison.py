"""The demo's poisoned checkpoint is saved as every writer saves: its GC keeps what the
model's retention table and the version pointer keep (opened bare, it pruned the live
version's rollback target in a demo run)."""

from __future__ import annotations

from pathlib import Path

from river import datasets

from services.checkpoints.config import StoreConfig
from services.checkpoints.opener import open_store
from services.checkpoints.retention import VersionReferences
from services.demo.poison import write_poisoned
from services.learning.config import parse_config
from services.pointer.memory import InMemoryPointer

MODEL = "poison-m"
CONFIG = parse_config(
    {
        "model": [
            {
                "name": MODEL,
                "kind": "river",
                "factory": {"path": "river.linear_model.LogisticRegression"},
                "retention": {"policies": [{"policy": "latest_n", "params": {"n": 1}}]},
            }
        ]
    }
)
PAIRS = [(x, bool(y)) for x, y in list(datasets.Phishing())[:64]]


class SpyPointer(InMemoryPointer):
    """An in-memory pointer that counts the GC's reads of its references."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def references(self, model: str) -> VersionReferences:
        self.reads += 1
        return super().references(model)


def test_the_poisoned_save_prunes_by_the_model_table_and_keeps_what_the_pointer_names(
    tmp_path: Path,
) -> None:
    store = StoreConfig(root=tmp_path / "store", fsync=False)
    config = CONFIG.model(MODEL)
    pointer = SpyPointer()
    first = write_poisoned(store, config, PAIRS, references=pointer).version
    assert pointer.reads >= 1  # the save's GC asked the pointer
    pointer.promote(MODEL, first, actor="operator", reason="live")
    second = write_poisoned(store, config, PAIRS, references=pointer).version
    pointer.promote(MODEL, second, actor="operator", reason="forced")  # first: the previous
    write_poisoned(store, config, PAIRS, references=pointer)
    with open_store(store, CONFIG, references=pointer) as s:
        [plan] = s.gc(MODEL, dry_run=True)
    assert plan.kept[second].startswith("live")
    assert "rollback history #1" in plan.kept[first]
    assert plan.delete == []
