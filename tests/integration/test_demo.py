"""``driftloop demo`` end to end, as a user runs it: the loop learns, checkpoints
on drift and on schedule, dead-letters what it must, and leaves no process behind."""

from __future__ import annotations

import subprocess
import sys

import orjson
import psutil
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_runs_the_loop_and_leaves_nothing_behind() -> None:
    requests, drift_at = 2400, 1200
    options = ["--requests", str(requests), "--drift-at", str(drift_at)]
    options += ["--checkpoint-every", "400"]
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "demo", "--json", *options],
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    summary = orjson.loads(done.stdout)
    traffic = summary["traffic"]

    # Every feedback event inside its window is joined exactly once; late ones
    # and malformed records are dead-lettered with their reason.
    assert summary["joined_examples"] == traffic["feedback"] - traffic["late_feedback"]
    letters = summary["dead_letters"]
    assert letters.get("late", 0) == traffic["late_feedback"] > 0
    assert letters.get("decode", 0) + letters.get("validation", 0) == traffic["malformed"]

    checkpoints = summary["checkpoints"]
    triggers = [c["trigger"] for c in checkpoints]
    assert "count" in triggers
    # A drift checkpoint follows the drift point: examples_seen counts joined
    # examples, about 97% of requests here.
    assert any(c["trigger"] == "drift" and c["examples_seen"] > drift_at * 0.9 for c in checkpoints)
    versions = [c["version"] for c in checkpoints]
    assert versions == sorted(versions)
    assert len(set(versions)) == len(versions)
    # The trainer relearned the inverted concept well past chance (about 0.6).
    assert summary["final"]["metrics"]["accuracy"] > 0.7
    # Everything joined was trained and checkpointed, but for the open
    # micro-batch (32 examples), which waits for the next run.
    untrained = summary["joined_examples"] - summary["final"]["examples_seen"]
    assert 0 <= untrained < 32

    # The broker, Redis and worker it started are gone once it has exited.
    pids = summary["processes"]
    assert set(pids) >= {"worker"}
    assert len(pids) == 3
    alive = [pid for pid in pids.values() if psutil.pid_exists(pid)]
    alive = [pid for pid in alive if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert alive == []
