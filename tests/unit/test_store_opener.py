"""One store, one retention: every process opens the store through ``open_store``.

Guards issue 8 item 6. Before it, ``driftloop checkpoints gc`` built the store
with the store's default retention while the worker applied each model's
table (on the shipped river example the CLI would have deleted versions the
worker keeps, the best among them); ``gc`` and ``tier`` ran without any model
configuration; and ``list`` / ``show`` / ``verify`` on a store that does not
exist created it (directory, catalog), on one that exists wrote the catalog.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from schemas.errors import CheckpointError, CheckpointNotFoundError
from schemas.manifest import ManifestDraft
from services.checkpoints.config import StoreConfig
from services.checkpoints.opener import open_store
from services.cli import app
from services.learning.config import example_path, load_config
from tests.unit.store_helpers import make_store, save

runner = CliRunner()
RIVER = example_path("river_logreg")  # retention: latest_n 10 + best_n 3 by accuracy
MODEL = "river-logreg"


def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, ["checkpoints", *args], env=env)
    return result.exit_code, result.stdout, result.stderr


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


def commit_as_the_worker(root: Path, accuracies: list[float]) -> list[str]:
    """Commit like the worker does: through open_store with the shipped model config,
    retention running after every commit."""
    store = open_store(StoreConfig(root=root, fsync=False), load_config(RIVER))
    versions = []
    for step, accuracy in enumerate(accuracies):
        draft = ManifestDraft(
            step=step, trigger="count", metrics={"accuracy": accuracy}, key_metric="accuracy"
        )
        versions.append(store.commit(MODEL, {"w.bin": f"{step}".encode()}, draft).version)
    store.close()
    return versions


# Early checkpoints are the most accurate, so best_n keeps versions latest_n would not.
ACCURACIES = [0.99, 0.98, 0.97] + [0.5 + i / 100 for i in range(15)]


def test_the_cli_keeps_what_the_worker_keeps(tmp_path: Path) -> None:
    root = tmp_path / "store"
    versions = commit_as_the_worker(root, ACCURACIES)
    kept = {p.parent.name for p in (root / MODEL).glob("*/manifest.json")}
    assert kept == set(versions[:3]) | set(versions[-10:])  # the worker already pruned
    code, out, err = cli("gc", "--dry-run", "--json", "--config", str(RIVER), "--store", str(root))
    assert code == 0, err
    (plan,) = orjson.loads(out)["models"]
    assert plan["delete"] == []
    assert set(plan["kept"]) == kept
    # The store's own defaults (5 newest) would have deleted the three best.
    assert all("best" in plan["kept"][v] for v in versions[:3])


def test_gc_and_tier_without_a_model_config_change_nothing(tmp_path: Path) -> None:
    root = tmp_path / "store"
    commit_as_the_worker(root, ACCURACIES)
    before = snapshot(root)
    env = {"DRIFTLOOP_STORE_KEEP_LATEST": "1", "DRIFTLOOP_WORKER_MODELS": ""}
    for args in (["gc"], ["gc", "--dry-run"], ["tier"]):
        code, _, err = cli(*args, "--store", str(root), env=env)
        assert code == 2
        assert "model configuration" in err
    assert snapshot(root) == before


def test_gc_defaults_to_the_workers_model_config_variable(tmp_path: Path) -> None:
    root = tmp_path / "store"
    commit_as_the_worker(root, ACCURACIES)
    env = {"DRIFTLOOP_WORKER_MODELS": str(RIVER), "DRIFTLOOP_STORE_KEEP_LATEST": "1"}
    code, out, err = cli("gc", "--dry-run", "--json", "--store", str(root), env=env)
    assert code == 0, err
    assert orjson.loads(out)["models"][0]["delete"] == []


def test_gc_reads_the_same_variable_as_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.cli.checkpoint_commands import _ModelsSetting
    from streams.worker import WorkerConfig

    monkeypatch.setenv("DRIFTLOOP_WORKER_MODELS", str(RIVER))
    assert _ModelsSetting().models == WorkerConfig().models == RIVER


def test_gc_leaves_alone_models_the_config_does_not_declare(tmp_path: Path) -> None:
    store = make_store(tmp_path, keep_latest=1000)
    for step in range(4):
        save(store, model="other", step=step)
    store.close()
    root = tmp_path / "hot"
    before = snapshot(root / "other")
    env = {"DRIFTLOOP_STORE_KEEP_LATEST": "1"}
    code, out, err = cli("gc", "--json", "--config", str(RIVER), "--store", str(root), env=env)
    assert code == 0, err
    assert orjson.loads(out)["skipped"] == ["other"]
    assert snapshot(root / "other") == before
    code, _, err = cli("gc", "--model", "other", "--config", str(RIVER), "--store", str(root))
    assert code == 2
    assert "not in" in err


@pytest.mark.parametrize(
    "args",
    [
        ["list"],
        ["list", "--all", "--json"],
        ["show", MODEL, f"{MODEL}-000001"],
        ["verify"],
        ["gc", "--dry-run", "--config", str(RIVER)],
        ["pin", MODEL, f"{MODEL}-000001", "prod"],
        ["reindex"],
    ],
)
def test_no_command_creates_a_missing_store(tmp_path: Path, args: list[str]) -> None:
    missing = tmp_path / "no-store-here"
    code, _, err = cli(*args, "--store", str(missing))
    assert code == 2
    assert "no checkpoint store" in err
    assert str(missing) in err
    assert not missing.exists()


@pytest.mark.parametrize(
    "args",
    [
        ["list", "--all"],
        ["show", MODEL, f"{MODEL}-000004"],
        ["verify", "--json"],
        ["gc", "--dry-run", "--config", str(RIVER)],
    ],
)
def test_read_commands_write_nothing(tmp_path: Path, args: list[str]) -> None:
    root = tmp_path / "store"
    commit_as_the_worker(root, [0.5, 0.6, 0.7, 0.8])
    (root / "catalog.sqlite3").unlink()  # the catalog is rebuildable: readers must not rebuild it
    for leftover in root.glob("catalog.sqlite3-*"):
        leftover.unlink()
    before = snapshot(root)
    code, _, err = cli(*args, "--store", str(root))
    assert code == 0, err
    assert snapshot(root) == before


def test_a_read_only_store_refuses_every_write(tmp_path: Path) -> None:
    root = tmp_path / "store"
    versions = commit_as_the_worker(root, [0.5, 0.6])
    before = snapshot(root)
    store = open_store(StoreConfig(root=root), load_config(RIVER), read_only=True)
    assert store.open(MODEL).manifest.version == versions[-1]
    assert [m.version for m in store.manifests(MODEL)] == versions
    draft = ManifestDraft(step=9, trigger="count")
    with pytest.raises(CheckpointError, match="read-only"):
        store.commit(MODEL, {"w.bin": b"x"}, draft)
    with pytest.raises(CheckpointError, match="read-only"):
        store.pin(MODEL, versions[0], "prod")
    (plan,) = store.gc(MODEL, dry_run=True)
    assert plan.delete == []
    store.close()
    assert snapshot(root) == before


def test_read_only_on_a_missing_store_is_an_error_not_an_empty_store(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint store") as info:
        open_store(StoreConfig(root=missing), None, read_only=True)
    assert info.value.context["path"] == str(missing)
    assert not missing.exists()
    assert os.listdir(tmp_path) == []
