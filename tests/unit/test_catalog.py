"""Catalog queries, pins, and rebuilding the catalog from the manifests."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from schemas.errors import CheckpointError
from tests.unit.store_helpers import make_store, save


def test_query_by_trigger_time_range_and_best_metric(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    losses = [0.5, 0.2, 0.9, 0.3]
    made = []
    for i, loss in enumerate(losses):
        trigger = "drift" if i % 2 else "count"
        made.append(
            save(store, step=i, trigger=trigger, metrics={"logloss": loss, "auc": 1 - loss})
        )
        time.sleep(0.002)
    save(store, model="other", step=0)
    assert [r.version for r in store.query("fraud", trigger="drift")] == [
        made[1].version,
        made[3].version,
    ]
    since, until = made[1].created_ts, made[3].created_ts
    assert [r.version for r in store.query("fraud", since_ms=since, until_ms=until)] == [
        made[1].version,
        made[2].version,
    ]
    best = store.query("fraud", best_by="logloss", mode="min", limit=2)
    assert [r.metrics["logloss"] for r in best] == [0.2, 0.3]
    assert store.query("fraud", best_by="auc", mode="max", limit=1)[0].version == made[1].version
    assert store.query("fraud", best_by="nonexistent") == []
    assert {r.model for r in store.query()} == {"fraud", "other"}


def test_lineage_follows_parents_newest_first(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    a = save(store, step=1)
    b = save(store, step=2, parent_version=a.version)
    c = save(store, step=3, parent_version=b.version)
    save(store, step=4, parent_version=a.version)  # a sibling branch
    assert [r.version for r in store.lineage("fraud", c.version)] == [
        c.version,
        b.version,
        a.version,
    ]


def test_pins_move_labels_and_survive_in_listings(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    a, b = save(store, step=1), save(store, step=2)
    assert store.pin("fraud", a.version, "prod-2026-11-27") is None
    store.pin("fraud", a.version, "pre-drift")
    assert store.record("fraud", a.version).pins == ("pre-drift", "prod-2026-11-27")
    assert store.pin("fraud", b.version, "pre-drift") == a.version  # the label moved
    assert store.record("fraud", b.version).pins == ("pre-drift",)
    assert store.unpin("fraud", version=a.version) == ["prod-2026-11-27"]
    assert store.record("fraud", a.version).pins == ()
    with pytest.raises(CheckpointError, match="pin label"):
        store.pin("fraud", a.version, "no spaces allowed")


def test_deleting_the_catalog_and_reindexing_loses_nothing(tmp_path: Path) -> None:
    store = make_store(tmp_path, cold_url=str(tmp_path / "cold"), hot_keep_newest=2)
    for i in range(5):
        save(
            store,
            step=i,
            metrics={"logloss": 1.0 / (i + 1)},
            key_metric="logloss",
            trigger="drift" if i == 3 else "count",
        )
    save(store, model="other", step=7)
    store.pin("fraud", "fraud-000002", "prod-2026-11-27")
    before = sorted(r.as_json().items().__repr__() for r in store.query())
    store.close()
    catalog = tmp_path / "hot" / "catalog.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(str(catalog) + suffix).unlink(missing_ok=True)
    rebuilt = make_store(tmp_path, cold_url=str(tmp_path / "cold"), hot_keep_newest=2)
    assert rebuilt.reindex() == 6
    after = sorted(r.as_json().items().__repr__() for r in rebuilt.query())
    assert after == before
    assert rebuilt.record("fraud", "fraud-000002").pins == ("prod-2026-11-27",)
    assert rebuilt.record("fraud", "fraud-000001").tier == "cold"
    assert rebuilt.query("fraud", trigger="drift")[0].version == "fraud-000004"
