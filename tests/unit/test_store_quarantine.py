"""A version whose manifest does not validate is quarantined by GC, never deleted on its own.

Manifests are written whole (renamed into place, or one put), so an invalid
one is damage: the directory is the evidence and maybe the only copy of a
model. Interrupted work (dead writers' temp dirs, version dirs without any
manifest) is still removed.
"""

from __future__ import annotations

from pathlib import Path

import orjson
from typer.testing import CliRunner

from services.cli import app
from tests.unit.store_helpers import make_store, save


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["checkpoints", *args])
    return result.exit_code, result.stdout


def test_gc_quarantines_a_corrupt_version_and_removes_interrupted_work(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    first = save(store, step=1)
    bad = save(store, step=2)
    save(store, step=3)
    model_dir = tmp_path / "hot" / "fraud"
    (model_dir / bad.version / "manifest.json").write_bytes(b'{"model": "fraud", "trunc')
    no_manifest = model_dir / "fraud-000009"
    no_manifest.mkdir()
    (no_manifest / "part.bin").write_bytes(b"partial")

    (plan,) = store.gc("fraud", dry_run=True)
    assert [x.name for x in plan.quarantine] == [bad.version]
    assert [x.name for x in plan.leftovers] == ["fraud-000009"]
    assert (model_dir / bad.version).is_dir()  # a dry run moves nothing

    (plan,) = store.gc("fraud")
    assert not (model_dir / bad.version).exists()
    assert not no_manifest.exists()
    (q,) = store.quarantined("fraud")
    assert q.name.startswith(bad.version + "-")
    assert "manifest does not validate" in q.reason
    kept = model_dir / ".quarantine" / q.name
    assert (kept / "model.safetensors").read_bytes() == b"weights-2" * 10  # evidence kept
    assert [m.version for m in store.manifests("fraud")] == [first.version, "fraud-000003"]

    # Later GCs leave it alone; its seq is never reused.
    store.gc("fraud")
    store.gc("fraud")
    assert kept.is_dir()
    assert save(store, step=4).version == "fraud-000010"
    assert store.reindex() == 3
    assert bad.version not in [m.version for m in store.manifests("fraud")]

    # Only an explicit purge deletes it.
    assert [p.name for p in store.purge_quarantine("fraud", dry_run=True)] == [q.name]
    assert kept.is_dir()
    store.purge_quarantine("fraud")
    assert not kept.exists()
    assert store.quarantined("fraud") == []


def test_a_manifest_naming_another_checkpoint_is_quarantined(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    a = save(store, step=1)
    b = save(store, step=2)
    folder = tmp_path / "hot" / "fraud"
    (folder / b.version / "manifest.json").write_bytes(
        (folder / a.version / "manifest.json").read_bytes()
    )
    store.gc("fraud")
    (q,) = store.quarantined("fraud")
    assert f"names fraud/{a.version}" in q.reason


def test_cli_reports_quarantine_and_purges_only_on_request(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    save(store, step=1)
    bad = save(store, step=2)
    store.close()
    root = tmp_path / "hot"
    (root / "fraud" / bad.version / "manifest.json").write_bytes(b"{broken")
    models = tmp_path / "models.toml"  # gc applies the retention of the worker's model config
    models.write_text(
        '[[model]]\nname = "fraud"\nkind = "river"\n'
        'factory = { path = "river.linear_model.LogisticRegression" }\n'
    )

    code, out = run("gc", "--config", str(models), "--store", str(root), "--json")
    assert code == 0
    (plan,) = orjson.loads(out)["models"]
    assert [x["name"] for x in plan["quarantine"]] == [bad.version]
    assert plan["leftovers"] == []

    code, out = run("list", "--all", "--store", str(root), "--json")
    (q,) = orjson.loads(out)["quarantined"]
    assert q["name"].startswith(bad.version)
    assert "manifest" in q["reason"]

    code, out = run("verify", "--store", str(root), "--json")
    assert code == 1
    (problem,) = orjson.loads(out)["problems"]
    assert problem["problem"].startswith("quarantined: manifest")

    code, out = run("gc", "--config", str(models), "--store", str(root), "--json")
    assert orjson.loads(out)["models"][0]["quarantine"] == []
    assert (root / "fraud" / ".quarantine" / q["name"]).is_dir()

    code, out = run("gc", "--purge-quarantine", "--store", str(root), "--json")
    assert code == 0
    assert [p["name"] for p in orjson.loads(out)["purged"]] == [q["name"]]
    assert not (root / "fraud" / ".quarantine" / q["name"]).exists()
    code, out = run("verify", "--store", str(root), "--json")
    assert code == 0
