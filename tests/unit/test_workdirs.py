"""Temp directories of killed stacks and workers are removed on the next start, never
those of a process still running (issue 8, item 8)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from services.stack.workdirs import WorkDir, remove_stale

PREFIX = "driftloop-test-"

HOLDER = """
import sys
from pathlib import Path
from services.stack.workdirs import WorkDir
held = WorkDir(sys.argv[1], Path(sys.argv[2]))
(held.path / "data").write_text("in use")
print(held.path, flush=True)
sys.stdin.read()  # hold the directory until the test closes our stdin (or kills us)
"""


def holder(tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, PREFIX, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def test_a_killed_processes_directory_is_removed_a_live_ones_is_kept(tmp_path: Path) -> None:
    """Guards: ``driftloop-stack-*`` / ``driftloop-<role>-*`` dirs of processes killed
    with kill -9 piled up in /tmp; cleaning must not take a running one's."""
    alive, alive_dir = holder(tmp_path)
    killed, killed_dir = holder(tmp_path)
    killed.kill()
    killed.wait()
    legacy = tmp_path / f"{PREFIX}abc123"  # no pid in the name: not ours to judge
    legacy.mkdir()
    try:
        assert remove_stale(PREFIX, tmp_path) == [killed_dir]
        assert not killed_dir.exists()
        assert (alive_dir / "data").read_text() == "in use"
        assert legacy.is_dir()
    finally:
        assert alive.stdin is not None
        alive.stdin.close()
        alive.wait()
    assert remove_stale(PREFIX, tmp_path) == [alive_dir]  # its holder exited without cleaning


def test_a_work_dir_is_locked_while_held_and_gone_after_remove(tmp_path: Path) -> None:
    held = WorkDir(PREFIX, tmp_path)
    assert remove_stale(PREFIX, tmp_path) == []
    assert held.path.is_dir()
    held.remove()
    held.remove()
    assert not held.path.exists()


def test_the_embedded_stack_holds_its_work_dir_and_removes_it_on_stop() -> None:
    from services.stack import embedded

    stack = embedded.EmbeddedStack()
    path = stack._work_path()
    try:
        assert path.name.startswith(embedded.WORKDIR_PREFIX)
        assert path not in remove_stale(embedded.WORKDIR_PREFIX)
        assert path.is_dir()
    finally:
        stack.stop()
    assert not path.exists()
