"""``driftloop checkpoints ...`` as an operator uses it."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from services.cli import app
from tests.unit.store_helpers import make_store, save

runner = CliRunner()


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    store = make_store(tmp_path)
    for i, loss in enumerate([0.5, 0.2, 0.4]):
        save(
            store,
            step=i * 100,
            metrics={"logloss": loss},
            key_metric="logloss",
            trigger="drift" if i == 1 else "count",
        )
    save(store, model="other")
    store.close()
    return tmp_path / "hot"


@pytest.fixture
def models_toml(tmp_path: Path) -> Path:
    """A model configuration keeping only the newest checkpoint of ``fraud``."""
    path = tmp_path / "models.toml"
    path.write_text(
        """
[[model]]
name = "fraud"
kind = "river"
factory = { path = "river.linear_model.LogisticRegression" }
[model.retention]
policies = [{ policy = "latest_n", params = { n = 1 } }]
"""
    )
    return path


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["checkpoints", *args])
    return result.exit_code, result.stdout, result.stderr


def test_list_json_with_filters(store_dir: Path) -> None:
    code, out, _ = run("list", "--store", str(store_dir), "--model", "fraud", "--json")
    assert code == 0
    labels = [c["label"] for c in orjson.loads(out)["checkpoints"]]
    assert labels == [
        "fraud-000001 step=0 count logloss=0.5000",
        "fraud-000002 step=100 drift logloss=0.2000",
        "fraud-000003 step=200 count logloss=0.4000",
    ]
    code, out, _ = run("list", "--store", str(store_dir), "--trigger", "drift", "--json")
    assert [c["version"] for c in orjson.loads(out)["checkpoints"]] == ["fraud-000002"]
    code, out, _ = run(
        "list", "--store", str(store_dir), "--best-by", "logloss", "--limit", "2", "--json"
    )
    assert [c["version"] for c in orjson.loads(out)["checkpoints"]] == [
        "fraud-000002",
        "fraud-000003",
    ]
    code, out, _ = run("list", "--store", str(store_dir), "--since", "1h", "--json")
    assert len(orjson.loads(out)["checkpoints"]) == 4


def test_list_table_shows_labels(store_dir: Path) -> None:
    code, out, _ = run("list", "--store", str(store_dir), "--model", "fraud")
    assert code == 0
    assert "fraud-000002" in out
    assert "drift" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["list", "--model", "nope"], "unknown model 'nope'"),
        (["list", "--best-by", "accuracy"], "has metric 'accuracy'"),
        (["list", "--trigger", "sometimes"], "unknown trigger"),
        (["list", "--since", "yesterday-ish"], "cannot read time"),
        (["show", "fraud", "fraud-000099"], "no committed checkpoint"),
        (["show", "nope", "nope-000001"], "unknown model"),
        (["pin", "fraud", "fraud-000099", "prod"], "no committed checkpoint"),
        (["pin", "fraud", "fraud-000001", "bad label"], "pin label"),
        (["unpin", "fraud", "--label", "never-set"], "no such pin"),
        (["gc", "--model", "fraud"], "needs the model configuration"),
        (["tier", "--model", "fraud"], "needs the model configuration"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(
    store_dir: Path, args: list[str], message: str
) -> None:
    code, out, err = run(*args, "--store", str(store_dir))
    assert code == 2
    assert message in err
    assert "Traceback" not in out + err


def test_show_json_has_manifest_and_lineage(store_dir: Path) -> None:
    code, out, _ = run("show", "fraud", "fraud-000002", "--store", str(store_dir), "--json")
    assert code == 0
    doc = orjson.loads(out)
    assert doc["manifest"]["version"] == "fraud-000002"
    assert {f["name"] for f in doc["manifest"]["files"]} == {
        "model.safetensors",
        "state/optim.json",
    }
    assert doc["lineage"] == ["fraud-000002"]


def test_pin_gc_dry_run_and_gc(store_dir: Path, models_toml: Path) -> None:
    assert run("pin", "fraud", "fraud-000001", "prod-2026-11-27", "--store", str(store_dir))[0] == 0
    args = ["--model", "fraud", "--config", str(models_toml), "--store", str(store_dir)]
    code, out, _ = run("gc", "--dry-run", *args, "--json")
    assert code == 0
    (plan,) = orjson.loads(out)["models"]
    assert plan["delete"] == ["fraud-000002"]
    assert plan["kept"]["fraud-000001"] == "pinned prod-2026-11-27"
    assert "newest" in plan["kept"]["fraud-000003"]
    code, out, _ = run("gc", "--dry-run", *args)
    assert "would delete" in out
    assert "pinned prod-2026-11-27" in out
    assert (store_dir / "fraud" / "fraud-000002").exists()
    assert run("gc", *args)[0] == 0
    assert not (store_dir / "fraud" / "fraud-000002").exists()
    assert run("unpin", "fraud", "--label", "prod-2026-11-27", "--store", str(store_dir))[0] == 0


def test_reindex_and_verify(store_dir: Path) -> None:
    (store_dir / "catalog.sqlite3").unlink()
    code, out, _ = run("reindex", "--store", str(store_dir), "--json")
    assert code == 0
    assert orjson.loads(out) == {"checkpoints": 4}
    code, out, _ = run("verify", "--store", str(store_dir), "--json")
    assert code == 0
    assert orjson.loads(out) == {"checked": 4, "problems": []}
    target = store_dir / "fraud" / "fraud-000003" / "model.safetensors"
    target.write_bytes(b"bit rot")
    code, out, _ = run("verify", "--store", str(store_dir), "--json")
    assert code == 1
    (problem,) = orjson.loads(out)["problems"]
    assert str(target) in problem["problem"]


def test_list_all_reports_uncommitted_directories(store_dir: Path) -> None:
    (store_dir / "fraud" / "fraud-000003" / "manifest.json").write_bytes(b"{broken")
    code, out, _ = run("list", "--all", "--store", str(store_dir), "--model", "fraud", "--json")
    assert code == 0
    doc = orjson.loads(out)
    assert "fraud-000003" not in [c["version"] for c in doc["checkpoints"]]
    assert doc["not_committed"][0]["name"] == "fraud-000003"


def test_best_by_accuracy_lists_the_most_accurate_first(tmp_path: Path) -> None:
    """``--best-by accuracy`` without ``--mode`` listed the *worst* first (it
    defaulted to min, issue 9); the direction now comes from the metric, and
    ``--mode`` still overrides it."""
    store = make_store(tmp_path)
    for i, accuracy in enumerate([0.7, 0.9, 0.8]):
        save(store, step=i, metrics={"accuracy": accuracy, "log_loss": 1 - accuracy})
    store.close()
    hot = str(tmp_path / "hot")

    def best(*args: str) -> list[float]:
        code, out, err = run("list", "--store", hot, "--json", *args)
        assert code == 0, err
        return [c["metrics"]["accuracy"] for c in orjson.loads(out)["checkpoints"]]

    assert best("--best-by", "accuracy") == [0.9, 0.8, 0.7]
    assert best("--best-by", "log_loss")[0] == 0.9  # a loss: smallest first
    assert best("--best-by", "accuracy", "--mode", "min") == [0.7, 0.8, 0.9]


def test_store_keep_best_by_accuracy_keeps_the_most_accurate() -> None:
    """``DRIFTLOOP_STORE_BEST_METRIC=accuracy`` without a mode kept the least
    accurate checkpoints; it follows the same rule as the CLI."""
    from services.checkpoints.catalog import CheckpointRecord
    from services.checkpoints.config import StoreConfig
    from services.checkpoints.retention import best_mode, policy_from_config

    assert [best_mode(m) for m in ("accuracy", "log_loss", "rmse")] == ["max", "min", "min"]
    records = [
        CheckpointRecord(
            model="m",
            version=f"m-{seq}",
            seq=seq,
            parent_version=None,
            created_ts=seq,
            step=seq,
            examples_seen=seq,
            trigger="count",
            metrics={"accuracy": accuracy},
            key_metric="accuracy",
            label=f"m-{seq}",
            kind="full",
            base_version=None,
            dependencies=frozenset(),
            tier="hot",
            location="",
            size=0,
            status="committed",
        )
        for seq, accuracy in enumerate([0.9, 0.7, 0.8, 0.6])
    ]
    policy = policy_from_config(StoreConfig(keep_latest=1, keep_best=1, best_metric="accuracy"))
    assert sorted(policy.keep("m", records, now_ms=10)) == ["m-0", "m-3"]  # best, latest
