"""A worker whose checkpoints stop loading exits 2 naming them, also when it finds
out only at a partition assignment (issue 8, item 4), and removes its own datadir."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

from schemas.codec import encode
from services.checkpoints.config import StoreConfig
from services.checkpoints.store import CheckpointStore
from services.deadletters import RawRecord
from services.learning.config import parse_config
from services.learning.pool import TrainerPool
from tests.integration._procs import worker_env
from tests.integration.test_exactly_once import make_examples
from tests.integration.test_trainer_agent import MODEL, model_config

if TYPE_CHECKING:
    from tests.integration.conftest import Sandbox

#: Build the worker (its pre-flight check passes), then damage every checkpoint before
#: it joins the group: the assignment finds nothing that loads.
SCRIPT = """
import sys
from pathlib import Path
from streams.worker import build, run
built = build("trainer", models_path=Path(sys.argv[1]))
print("datadir", built.workdir.path, flush=True)
for blob in Path(sys.argv[2]).glob("*/*/blobs/river.pkl"):
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
run(built)
"""


def test_checkpoints_that_stop_loading_before_the_assignment_exit_2(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Guards: an unloadable store at an assignment made the trainer start over at
    offset 0 (or crash with faust's exit code 1, the reason buried in its log)."""
    root = tmp_path / "store"
    store = CheckpointStore(StoreConfig(root=root, fsync=False))
    learning = parse_config(tomllib.loads(model_config()))
    topic = sandbox.topics.training_examples
    pool = TrainerPool(learning.models, store, topic=topic, partitions=sandbox.topics.partitions)
    home = pool.lanes[MODEL].partition
    pool.assign([home])
    values = [encode(e) for e in make_examples(MODEL, 80)]
    pool.handle([RawRecord(topic, home, i, MODEL.encode(), v) for i, v in enumerate(values)])
    pool.close()
    versions = [m.version for m in store.manifests(MODEL)]
    assert len(versions) == 2
    store.close()
    models = tmp_path / "models.toml"
    models.write_text(model_config())
    env = worker_env(sandbox, app_id=f"restore-{sandbox.name}", store=root)
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(models), str(root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: model tr-logreg: no checkpoint loads")
    assert all(v in last for v in versions)
    datadir = Path(done.stdout.split()[1])
    assert not datadir.exists()  # the worker's own datadir is gone with it
