"""Temporary work directories that a later process can clean up safely.

The embedded stack (``driftloop-stack-*``) and workers (faust's datadir,
``driftloop-<role>-*``) keep files in the system temp directory. A process
killed with ``kill -9`` leaves its directory behind, so every start removes
the stale ones of its kind — never one a running process still uses:

- the directory name carries the creator's pid (``{prefix}{pid}-{random}``);
- the creator holds an exclusive ``flock`` on the directory itself for as
  long as it uses it (the lock dies with the process, whatever kills it).

A directory is stale when its lock is free *and* its pid is not alive on
this host; either alone is not enough (the lock is taken right after the
directory is made; a pid may be in another pid namespace sharing ``/tmp``).
Directories named without a pid (made by older versions) are left alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
from pathlib import Path

from services.checkpoints.layout import pid_alive


class WorkDir:
    """A fresh temporary directory, locked while this object holds it.

    Parameters
    ----------
    prefix
        Name prefix, e.g. ``"driftloop-stack-"``; the pid follows it.
    parent
        Where to create it (default: the system temp directory).
    """

    def __init__(self, prefix: str, parent: Path | None = None) -> None:
        base = str(parent) if parent is not None else None
        self.path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=base))
        self._fd: int | None = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def remove(self) -> None:
        """Delete the directory and release its lock (idempotent)."""
        if self._fd is None:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._fd)
        self._fd = None


def _locked(path: Path) -> bool:
    """Whether some process holds the lock of directory ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return True  # cannot tell: leave it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock we took
    return False


def remove_stale(prefix: str, parent: Path | None = None) -> list[Path]:
    """Remove the stale work directories named ``{prefix}{pid}-*``; returns them.

    Stale: its lock is free and its pid is not alive (see the module docstring).
    """
    folder = parent if parent is not None else Path(tempfile.gettempdir())
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)-")
    removed: list[Path] = []
    with contextlib.suppress(OSError):
        for entry in folder.iterdir():
            match = pattern.match(entry.name)
            if match is None or not entry.is_dir() or entry.is_symlink():
                continue
            pid = int(match.group(1))
            if pid == os.getpid() or pid_alive(pid) or _locked(entry):
                continue
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed
