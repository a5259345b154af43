"""A damaged checkpoint never means "start over": the trainer falls back to the newest
checkpoint that loads, and refuses to start when none does (issue 8, item 4).

Driven through :class:`TrainerPool` on a real store, without Kafka: three
checkpoints ``m-000001`` (full), ``m-000002`` and ``m-000003`` (deltas on
their predecessor) after 8, 16 and 24 examples.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from schemas.codec import decode, encode
from schemas.errors import NoLoadableCheckpointError
from schemas.events import CheckpointEvent
from services.checkpoints.checkpointer import Checkpointer, CheckpointerConfig
from services.checkpoints.config import StoreConfig
from services.checkpoints.health import unloadable
from services.checkpoints.state.state import CheckpointState
from services.checkpoints.store import CheckpointStore
from services.learning.config import ModelConfig, example_path, load_config
from services.learning.pool import TrainerPool, partition_of
from tests.unit.test_worker_pool import PARTS, TOPIC, config, example, records, sent

MODEL_DIR = "m"


@pytest.fixture
def home() -> int:
    return partition_of("m", PARTS)


def train(root: Path, home: int, count: int, *, start: int = 0) -> TrainerPool:
    pool = pool_on(root)
    assert pool.assign([home]) == {home: start}
    pool.handle(records([encode(example(i)) for i in range(start, count)], home, start))
    pool.close()
    return pool


def pool_on(
    root: Path, *, from_scratch: bool = False, model: ModelConfig | None = None
) -> TrainerPool:
    store = CheckpointStore(StoreConfig(root=root, fsync=False, keep_latest=100))
    # A fixed cadence: the river saves below form delta chains although each delta
    # rewrites the model's pickle (the byte-driven default would end a chain at once).
    chains = Checkpointer(store, CheckpointerConfig(full_every=8, full_after_fraction=None))
    return TrainerPool(
        [model or config()],
        store,
        topic=TOPIC,
        partitions=PARTS,
        from_scratch=from_scratch,
        checkpointer=chains,
    )


def torch_config() -> ModelConfig:
    cfg = load_config(example_path("torch_fm")).models[0]
    return cfg.model_copy(
        update={
            "name": "m",
            "batch_size": 4,
            "triggers": cfg.triggers.model_copy(update={"every_n": 8, "interval_s": None}),
            "encoding": cfg.encoding.model_copy(update={"buckets": 256}) if cfg.encoding else None,
            # the checkpoints below fall after 8, 16, 24 examples: every example learned
            "promotion": cfg.promotion.model_copy(update={"holdout_percent": 0}),
        }
    )


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def version_dir(root: Path, n: int) -> Path:
    return root / MODEL_DIR / f"m-{n:06d}"


def quarantine(root: Path, n: int) -> None:
    """Damage a manifest so that GC moves the version to quarantine."""
    (version_dir(root, n) / "manifest.json").write_bytes(b"{not json")
    with CheckpointStore(StoreConfig(root=root, fsync=False, keep_latest=100)) as store:
        store.gc(MODEL_DIR)
    assert not version_dir(root, n).exists()


@pytest.fixture
def store_root(tmp_path: Path, home: int) -> Path:
    root = tmp_path / "store"
    train(root, home, 24)
    return root


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(
    store_root: Path, home: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Guards: a hash mismatch in the newest checkpoint stopped the restore (or, for a
    missing file, started over); now the previous checkpoint is restored, loudly."""
    flip(version_dir(store_root, 3) / "blobs" / "river.pkl")
    pool = pool_on(store_root)
    with caplog.at_level(logging.ERROR):
        assert pool.preflight() == {"m": "m-000002"}
        assert pool.assign([home]) == {home: 16}
    (lane,) = pool.lanes.values()
    assert lane.trainer is not None
    assert (lane.trainer.step, lane.trainer.examples_seen) == (4, 16)
    assert (pool.stats.fallbacks, pool.stats.restore_failures) == (1, 1)
    assert any("m-000003" in r.getMessage() and "does not load" in r.getMessage()
               for r in caplog.records if r.levelno == logging.ERROR)  # fmt: skip
    # The CheckpointEvent repeated on restore is that of the checkpoint restored.
    events = [decode(CheckpointEvent, v) for v in sent(pool.drain(), "checkpoints")]
    assert [e.version for e in events] == ["m-000002"]


@pytest.mark.parametrize("damage", ["quarantined", "missing"])
def test_a_broken_chain_resumes_from_the_newest_loadable_checkpoint_with_its_offsets(
    store_root: Path, tmp_path: Path, home: int, damage: str
) -> None:
    """Guards: with the parent of the newest delta quarantined or gone, the trainer logged
    "no checkpoint yet, training from scratch" and sought to offset 0 (step 0)."""
    if damage == "quarantined":
        quarantine(store_root, 2)
    else:
        shutil.rmtree(version_dir(store_root, 2))
    pool = pool_on(store_root)
    assert pool.assign([home]) == {home: 8}
    assert pool.stats.fallbacks == 1
    # m-000003 (the child) and, unless it is gone altogether, m-000002
    assert pool.stats.restore_failures == (1 if damage == "missing" else 2)
    # Resume from offset 8: the result equals an uninterrupted run over the same input.
    pool.handle(records([encode(example(i)) for i in range(8, 24)], home, 8))
    pool.close()
    resumed = pool.store.latest("m")
    assert resumed is not None
    clean = train(tmp_path / "clean", home, 24).store.latest("m")
    assert clean is not None
    assert (resumed.step, resumed.examples_seen, resumed.offsets) == (
        clean.step,
        clean.examples_seen,
        clean.offsets,
    )
    assert resumed.example_digest == clean.example_digest
    # The saves after the fallback build on the restored version, never on the broken chain.
    after = [m for m in pool.store.manifests("m") if m.version > "m-000003"]
    assert after[0].parent_version == "m-000001"
    assert {dep for m in after for dep in m.dependencies()} <= {"m-000001"} | {
        m.version for m in after
    }
    assert not set(unloadable(pool.store, "m")) & {m.version for m in after}


def test_no_loadable_checkpoint_refuses_to_start_naming_every_version(
    store_root: Path, home: int
) -> None:
    """Guards: all checkpoints damaged -> the worker silently trained from scratch."""
    for n in (1, 2, 3):
        flip(version_dir(store_root, n) / "blobs" / "river.pkl")
    pool = pool_on(store_root)
    with pytest.raises(NoLoadableCheckpointError) as caught:
        pool.preflight()
    failures = caught.value.failures
    assert list(failures) == ["m-000003", "m-000002", "m-000001"]
    assert "does not match" in failures["m-000001"]
    message = str(caught.value)
    assert all(v in message for v in failures)
    assert "--from-scratch" in message
    with pytest.raises(NoLoadableCheckpointError):
        pool.assign([home])


def test_only_damaged_versions_left_is_not_an_empty_store(store_root: Path, home: int) -> None:
    """Guards: after GC quarantined every version the trainer started over silently."""
    for n in (3, 2, 1):
        (version_dir(store_root, n) / "manifest.json").write_bytes(b"{not json")
    with CheckpointStore(StoreConfig(root=store_root, fsync=False)) as store:
        store.gc("m")
    with pytest.raises(NoLoadableCheckpointError) as caught:
        pool_on(store_root).preflight()
    assert set(caught.value.failures) == {"m-000001", "m-000002", "m-000003"}
    assert all("quarantined" in why for why in caught.value.failures.values())


def test_from_scratch_starts_over_loudly_and_keeps_its_own_checkpoints(
    store_root: Path, home: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Guards: there was no explicit way to start over; now only --from-scratch does."""
    flip(version_dir(store_root, 1) / "blobs" / "river.pkl")
    with caplog.at_level(logging.WARNING):
        pool = pool_on(store_root, from_scratch=True)
    assert any("--from-scratch" in r.getMessage() and "m-000003" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    assert pool.preflight() == {"m": None}
    assert pool.assign([home]) == {home: 0}
    pool.handle(records([encode(example(i)) for i in range(8)], home))
    pool.flush()
    first = pool.store.latest("m")
    assert first is not None
    assert (first.version, first.kind, first.parent_version) == ("m-000004", "full", None)
    # A later assignment restores what this run saved, not the old checkpoints.
    pool.assign([])
    assert pool.assign([home]) == {home: 8}
    pool.close()


def test_an_empty_store_still_starts_fresh(tmp_path: Path, home: int) -> None:
    pool = pool_on(tmp_path / "empty")
    assert pool.preflight() == {"m": None}
    assert pool.assign([home]) == {home: 0}
    assert pool.stats.fallbacks == 0


def test_the_writer_never_extends_an_unloadable_newest_checkpoint(
    store_root: Path,
) -> None:
    """Guards: a delta built on a checkpoint whose chain is broken cannot be loaded."""
    shutil.rmtree(version_dir(store_root, 2))
    store = CheckpointStore(StoreConfig(root=store_root, fsync=False, keep_latest=100))
    checkpointer = Checkpointer(store)
    state = CheckpointState(documents={"trainer": {"step": 1}}, blobs={"x": b"new"})
    manifest = checkpointer.save("m", state, step=99).result()
    checkpointer.close()
    assert manifest.kind == "full"
    assert manifest.version not in unloadable(store, "m")


def test_a_hash_mismatch_inside_a_torch_delta_chain_falls_back_past_its_children(
    tmp_path: Path, home: int
) -> None:
    """Guards: a tensor file of a chain member that fails its sha256 made the restore
    raise (the worker crashed in a loop); now the versions needing it are skipped."""
    root = tmp_path / "torch"
    pool = pool_on(root, model=torch_config())
    pool.assign([home])
    pool.handle(records([encode(example(i)) for i in range(24)], home))
    pool.close()
    kinds = [m.kind for m in pool.store.manifests("m")]
    assert kinds == ["full", "delta", "delta"]
    # The changed rows m-000002 stored: m-000003 applies them on its way up the chain.
    for rows in (version_dir(root, 2) / "rows").rglob("*.safetensors"):
        flip(rows)
    broken = unloadable(pool.store, "m")
    assert set(broken) == {"m-000002", "m-000003"}
    assert "m-000002" in broken["m-000003"]  # the child names the chain member it needs
    again = pool_on(root, model=torch_config())
    assert again.assign([home]) == {home: 8}
    assert (again.stats.fallbacks, again.stats.restore_failures) == (1, 2)
    again.close()


def test_verify_lists_every_unloadable_version_including_children_of_a_broken_chain(
    store_root: Path,
) -> None:
    """Guards: with a delta's parent quarantined, verify read the child's own files,
    found them intact and did not report that the child cannot be loaded."""
    from typer.testing import CliRunner

    from services.cli import app

    quarantine(store_root, 2)
    result = CliRunner().invoke(
        app, ["checkpoints", "verify", "--store", str(store_root), "--json"]
    )
    assert result.exit_code == 1
    problems = {p["version"]: p["problem"] for p in orjson.loads(result.stdout)["problems"]}
    assert "m-000003" in problems
    assert "m-000002" in problems["m-000003"]
    assert "m-000001" not in problems
    assert any(v.startswith(".quarantine/m-000002") for v in problems)


WORKER_TOML = """
[[model]]
name = "m"
kind = "river"
task = "classification"
batch_size = 4
factory = {path = "river.linear_model.LogisticRegression"}
triggers = {every_n = 8}
"""


def test_the_worker_exits_2_naming_each_version_when_no_checkpoint_loads(
    store_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards: the worker joined Kafka and trained from scratch over a store whose
    checkpoints all failed to load. Now it stops before connecting to anything."""
    from typer.testing import CliRunner

    from services.cli import app

    for n in (1, 2, 3):
        flip(version_dir(store_root, n) / "blobs" / "river.pkl")
    models = tmp_path / "models.toml"
    models.write_text(WORKER_TOML)
    monkeypatch.setenv("DRIFTLOOP_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # never reached
    result = CliRunner().invoke(
        app,
        ["worker", "--role", "trainer", "--config", str(models), "--store", str(store_root)],
    )
    assert result.exit_code == 2
    for version in ("m-000001", "m-000002", "m-000003"):
        assert version in result.stderr
    assert "--from-scratch" in result.stderr


def test_gc_keeps_the_newest_intact_chain_when_a_chain_member_is_quarantined(
    tmp_path: Path, home: int
) -> None:
    """Guards: with the parent of the newest delta quarantined, GC kept only the newest
    (unloadable) checkpoint and what it named, and deleted the last loadable one."""
    root = tmp_path / "store"
    pool = pool_on(root)
    pool.checkpointer.options = replace(pool.checkpointer.options, full_every=1)
    pool.assign([home])  # full_every=1: m-1 full, m-2 delta on m-1, m-3 full, m-4 delta on m-3
    pool.handle(records([encode(example(i)) for i in range(32)], home))
    pool.close()
    kinds = {m.version: (m.kind, m.parent_version) for m in pool.store.manifests("m")}
    assert kinds["m-000004"] == ("delta", "m-000003")
    assert kinds["m-000003"][0] == "full"
    quarantine(root, 3)
    with CheckpointStore(StoreConfig(root=root, fsync=False, keep_latest=1)) as store:
        (plan,) = store.gc("m")
        assert plan.kept["m-000002"] == "newest with an intact chain"
        assert "needed by m-000002" in plan.kept["m-000001"]
        assert [r.version for r in plan.delete] == []
    again = pool_on(root)
    assert again.assign([home]) == {home: 16}  # restored m-000002
    again.close()
