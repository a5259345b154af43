"""Subprocess for the kill -9 crash test: forks savers that commit checkpoints until killed.

Run as ``python -m tests.unit.crash_saver ROOT``. Importing driftloop once
and forking a fresh saver per kill cycle keeps the test fast. Protocol on
stdin/stdout, one line each:

- read ``go SEED``: fork a saver; print ``pid PID``; wait for it to die;
  print ``dead STATUS``.
- read ``quit`` (or EOF): exit.

A saver commits checkpoints in a loop into ROOT (model ``crash``): a few
files of random bytes, now and then one of a few MiB so a kill often lands
mid-write, now and then reusing a file of its parent by reference, with
GC after each commit keeping the newest 3 (so kills also land mid-GC).
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

from schemas.manifest import ManifestDraft
from services.checkpoints import CheckpointStore, StoreConfig

MODEL = "crash"


def save_forever(root: Path, seed: int) -> None:
    rng = random.Random(seed)
    store = CheckpointStore(StoreConfig(root=root, keep_latest=3, fsync=True))
    while True:
        parent = store.latest(MODEL)
        files = {f"part{j}.bin": rng.randbytes(rng.choice([64, 4096, 65536])) for j in range(3)}
        if rng.random() < 0.25:
            files["big.bin"] = rng.randbytes(3 * 1024 * 1024)
        draft = ManifestDraft(
            parent_version=parent.version if parent else None,
            step=rng.randrange(10**6),
            trigger="count",
            metrics={"loss": rng.random()},
            key_metric="loss",
        )
        shared = parent.file("part0.bin") if parent else None
        if shared is not None and rng.random() < 0.3:
            files.pop("part0.bin")
            ref = shared.model_copy(update={"ref_version": shared.ref_version or parent.version})  # type: ignore[union-attr]
            draft = draft.model_copy(update={"file_refs": {"part0.bin": ref}})
        store.commit(MODEL, files, draft)


def main() -> None:
    root = Path(sys.argv[1])
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            return
        seed = int(cmd[1])
        pid = os.fork()
        if pid == 0:
            try:
                save_forever(root, seed)
            finally:
                os._exit(1)
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"dead {status}", flush=True)


if __name__ == "__main__":
    main()
