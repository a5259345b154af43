"""Pins survive every kind of damage; GC never deletes a pinned or referenced version
(issue 8, item 5), and it cleans the temporary files of interrupted writes (item 8)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from services.checkpoints.health import dangling_pins
from services.checkpoints.retention import InMemoryReferences, VersionReferences
from services.cli import app
from tests.unit.store_helpers import make_store, save

runner = CliRunner()


def verify(root: Path) -> list[dict[str, str]]:
    result = runner.invoke(app, ["checkpoints", "verify", "--store", str(root), "--json"])
    problems: list[dict[str, str]] = orjson.loads(result.stdout)["problems"]
    return problems


def test_gc_quarantines_a_pinned_version_whose_manifest_is_missing(tmp_path: Path) -> None:
    """Guards: GC deleted the pinned directory as a "no manifest" leftover and left the
    pins file pointing at nothing."""
    store = make_store(tmp_path, keep_latest=1)
    pinned = save(store, step=1)
    store.pin("fraud", pinned.version, "prod")
    save(store, step=2)
    model_dir = tmp_path / "hot" / "fraud"
    (model_dir / pinned.version / "manifest.json").unlink()

    (plan,) = store.gc("fraud")
    assert [(x.name, x.reason) for x in plan.quarantine] == [
        (pinned.version, "pinned, manifest missing")
    ]
    assert plan.leftovers == []
    assert not (model_dir / pinned.version).exists()
    (q,) = store.quarantined("fraud")
    assert q.reason == "pinned, manifest missing"
    held = model_dir / ".quarantine" / q.name
    assert (held / "model.safetensors").read_bytes() == b"weights-1" * 10  # nothing lost
    # The pin stays: it still says which version the milestone was.
    assert store.pins.read("fraud") == {"prod": pinned.version}
    assert dangling_pins(store, "fraud") == {
        "prod": f"pin 'prod' names {pinned.version}, which is quarantined"
    }
    store.close()
    problems = verify(tmp_path / "hot")
    assert any(p["version"] == "pin:prod" for p in problems)


def test_gc_never_deletes_a_referenced_version_without_a_manifest(tmp_path: Path) -> None:
    """Guards: the live version's directory, its manifest lost, was deleted by GC."""
    refs = InMemoryReferences()
    store = make_store(tmp_path, keep_latest=1)
    store.references = refs
    live = save(store, step=1)
    refs.set("fraud", VersionReferences(live=live.version))
    save(store, step=2)
    (tmp_path / "hot" / "fraud" / live.version / "manifest.json").unlink()
    (plan,) = store.gc("fraud")
    assert [(x.name, x.reason) for x in plan.quarantine] == [
        (live.version, "referenced by the version pointer, manifest missing")
    ]
    assert len(store.quarantined("fraud")) == 1
    store.close()


@pytest.mark.parametrize(
    "damage", ["corrupt manifest", "missing manifest", "missing state file", "catalog deleted"]
)
def test_pins_survive_every_kind_of_damage(tmp_path: Path, damage: str) -> None:
    """Guards: after any damage and GC the pin still names its version, whose bytes are
    still in the store (committed or quarantined), and verify reports the damage."""
    store = make_store(tmp_path, keep_latest=1)
    pinned = save(store, step=1)
    store.pin("fraud", pinned.version, "milestone")
    save(store, step=2)
    save(store, step=3)
    store.close()
    root = tmp_path / "hot"
    vdir = root / "fraud" / pinned.version
    if damage == "corrupt manifest":
        (vdir / "manifest.json").write_bytes(b"{oops")
    elif damage == "missing manifest":
        (vdir / "manifest.json").unlink()
    elif damage == "missing state file":
        (vdir / "state" / "optim.json").unlink()
    else:
        (root / "catalog.sqlite3").unlink()
    store = make_store(tmp_path, keep_latest=1)
    store.gc()
    store.gc()  # a second pass must not finish off what the first one kept
    assert store.pins.read("fraud") == {"milestone": pinned.version}
    survivors = [vdir] + [q for q in (root / "fraud" / ".quarantine").glob("*") if q.is_dir()]
    assert any((d / "model.safetensors").is_file() for d in survivors if d.exists())
    if damage == "catalog deleted":
        assert [r.pins for r in store.query("fraud") if r.version == pinned.version] == [
            ("milestone",)
        ]
    store.close()
    problems = verify(root)
    if damage == "catalog deleted":
        assert problems == []
    else:
        assert problems  # the damage is reported, not hidden


def _dead_pid() -> int:
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(child.stdout)


def test_gc_removes_temp_files_of_interrupted_writes_but_not_a_live_writers(
    tmp_path: Path,
) -> None:
    """Guards: ``.seq.{pid}.tmp`` files of writers killed mid-write stayed forever."""
    store = make_store(tmp_path)
    save(store, step=1)
    model_dir = tmp_path / "hot" / "fraud"
    dead = model_dir / f".seq.{_dead_pid()}.tmp"
    dead_pins = model_dir / f".pins.json.{_dead_pid()}.tmp"
    live = model_dir / f".seq.{os.getppid()}.tmp"  # the process that runs pytest: alive
    for path in (dead, dead_pins, live):
        path.write_bytes(b"7")
    (plan,) = store.gc("fraud", dry_run=True)
    assert sorted(x.name for x in plan.leftovers) == sorted([dead.name, dead_pins.name])
    store.gc("fraud")
    assert not dead.exists()
    assert not dead_pins.exists()
    assert live.exists()
    assert (model_dir / ".seq").read_bytes() == b"1"
    assert store.latest("fraud") is not None
    store.close()
