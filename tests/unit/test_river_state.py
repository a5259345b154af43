"""River models and drift detectors survive a checkpoint and keep behaving identically."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from river import compose, drift, linear_model, preprocessing

from services.checkpoints.checkpointer import Checkpointer, CheckpointerConfig
from services.checkpoints.config import StoreConfig
from services.checkpoints.state.river_state import RiverAdapter
from services.checkpoints.store import CheckpointStore


def stream(seed: int, n: int) -> list[tuple[dict[str, float], bool]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        x = {"a": rng.gauss(0, 1), "b": rng.uniform(0, 10), "c": rng.random()}
        out.append((x, x["a"] + 0.1 * x["b"] > 0.5))
    return out


def fresh_objects() -> dict[str, Any]:
    return {
        "logreg": linear_model.LogisticRegression(),
        "pipeline": compose.Pipeline(
            preprocessing.StandardScaler(), linear_model.LogisticRegression()
        ),
        "adwin": drift.ADWIN(),
        "page_hinkley": drift.PageHinkley(),
        "kswin": drift.KSWIN(seed=3),
        "ddm": drift.binary.DDM(),
    }


def feed(objects: dict[str, Any], data: list[tuple[dict[str, float], bool]]) -> list[Any]:
    """Learn from ``data``; return every prediction and detector verdict along the way."""
    seen: list[Any] = []
    for i, (x, y) in enumerate(data):
        for name in ("logreg", "pipeline"):
            seen.append(objects[name].predict_proba_one(x).get(True))
            objects[name].learn_one(x, y)
        value = x["c"] + (2.0 if i > len(data) // 2 else 0.0)
        for name in ("adwin", "page_hinkley", "kswin"):
            objects[name].update(value)
            seen.append(objects[name].drift_detected)
        objects["ddm"].update(objects["logreg"].predict_one(x) != y)
        seen.append(objects["ddm"].drift_detected)
    return seen


def test_models_and_detectors_round_trip_and_keep_predicting_identically(tmp_path: Path) -> None:
    store = CheckpointStore(StoreConfig(root=tmp_path / "store", fsync=False))
    objects = fresh_objects()
    feed(objects, stream(1, 300))
    with Checkpointer(store, CheckpointerConfig()) as checkpointer:
        checkpointer.save("fraud", RiverAdapter(objects), step=300, trigger="count").result()

    later = stream(2, 300)
    expected = feed(objects, later)

    restored: dict[str, Any] = {}
    manifest = Checkpointer(store).restore("fraud", RiverAdapter(restored))
    assert manifest is not None
    assert manifest.step == 300
    assert set(restored) == set(objects)
    assert feed(restored, later) == expected
    assert any(v is True for v in expected), "the stream should make some detector fire"


@pytest.mark.parametrize("delta", [True, False])
def test_unchanged_river_blob_is_referenced_not_rewritten(tmp_path: Path, delta: bool) -> None:
    store = CheckpointStore(StoreConfig(root=tmp_path / "store", fsync=False))
    checkpointer = Checkpointer(store, CheckpointerConfig(async_saves=False, delta=delta))
    adapter = RiverAdapter({"model": linear_model.LogisticRegression()})
    checkpointer.save("fraud", adapter, step=1)
    second = checkpointer.save("fraud", adapter, step=2).result()
    blob = next(f for f in second.files if f.name.endswith(".pkl"))
    assert (blob.ref_version is not None) is delta
