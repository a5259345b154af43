"""kill -9 a saving process at >= 50 random moments; the store stays consistent.

After each kill: the store lists only complete checkpoints (every listed one
verifies), the newest loads, version ids are never reused, and the next GC
leaves nothing but committed checkpoints on disk.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.checkpoints import CheckpointStore, StoreConfig

REPO = Path(__file__).resolve().parents[2]
KILLS = 50


@pytest.fixture
def saver(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.unit.crash_saver", str(tmp_path / "store")],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    yield proc
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def committed_dirs(model_dir: Path) -> set[str]:
    """Version directories holding a manifest (a temp dir with one is not committed yet)."""
    return {
        p.name
        for p in model_dir.iterdir()
        if not p.name.startswith(".") and (p / "manifest.json").is_file()
    }


@pytest.mark.slow
def test_kill_9_at_random_moments_never_leaves_a_broken_store(
    saver: subprocess.Popen[str], tmp_path: Path
) -> None:
    assert saver.stdin is not None
    assert saver.stdout is not None
    rng = random.Random(20261127)
    root = tmp_path / "store"
    model_dir = root / "crash"
    seen: dict[str, int] = {}  # version -> created_ts: an id is never reused
    leftovers_seen = 0
    for cycle in range(KILLS):
        saver.stdin.write(f"go {cycle}\n")
        saver.stdin.flush()
        pid = int(saver.stdout.readline().split()[1])
        time.sleep(rng.uniform(0.02, 0.4))
        os.kill(pid, signal.SIGKILL)
        assert saver.stdout.readline().startswith("dead")

        store = CheckpointStore(StoreConfig(root=root, keep_latest=3))
        manifests = store.manifests("crash")
        listed = {m.version for m in manifests}
        on_disk = committed_dirs(model_dir) if model_dir.exists() else set()
        assert listed == on_disk
        for m in manifests:
            assert seen.setdefault(m.version, m.created_ts) == m.created_ts
            store.open("crash", m.version).verify()
        if manifests:
            newest = store.open("crash")
            assert newest.manifest.version == max(listed)
            assert newest.read("part1.bin")
        leftovers_seen += len(store.gc("crash", dry_run=True)[0].leftovers)
        store.gc("crash")
        if model_dir.exists():
            dirs = {p.name for p in model_dir.iterdir() if p.is_dir()}
            assert dirs == committed_dirs(model_dir)
        store.close()
    assert len(seen) > KILLS  # the savers made progress between kills
    # Kills landed mid-write often enough for the test to mean something.
    assert leftovers_seen > 0
