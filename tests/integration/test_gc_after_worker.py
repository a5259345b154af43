"""One store, one retention: the CLI keeps exactly what a real trainer worker kept.

Guards issue 8 item 6. A ``driftloop worker --role trainer`` runs the shipped
river example (its ``[model.retention]``: the 10 newest and the 3 most
accurate) with a small checkpoint interval until its own GC after commit has
pruned the store; then ``driftloop checkpoints gc --dry-run --json --config``
— a separate process, as an operator runs it — must find nothing more to
delete. Before the fix the CLI had no ``--config``: it used the store's
defaults (the 5 newest) and would have deleted versions the worker keeps,
the best ones among them. And ``gc`` without a model configuration refuses
and deletes nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import pytest

from schemas.codec import encode
from services.learning.config import example_path
from services.validation.base import is_held_out
from tests.integration._procs import WorkerProcess, manifests, newest, produce, worker_env
from tests.integration.test_exactly_once import make_examples
from tests.integration.test_trainer_agent import events, read_until

if TYPE_CHECKING:
    from tests.integration.conftest import Sandbox

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "river-logreg"  # the shipped example's model
#: about 1,200 learned: the shipped example holds 10% of the requests out
EXAMPLES = 1340
CLI = [sys.executable, "-c", "from services.cli import main; main()", "checkpoints"]


def small_interval_copy(tmp_path: Path) -> Path:
    """The shipped river example with a count checkpoint every 60 examples (not 5000)."""
    text = example_path("river_logreg").read_text()
    for old, new in [("every_n = 5000", "every_n = 60"), ("min_every_n = 500", "min_every_n = 30")]:
        assert old in text, f"the shipped example changed: no {old!r}"
        text = text.replace(old, new)
    path = tmp_path / "river_logreg.toml"
    path.write_text(text)
    return path


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


def checkpoints_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_cli_gc_with_the_workers_config_finds_nothing_the_worker_kept(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    config = small_interval_copy(tmp_path)
    store = tmp_path / "store"
    # The store's defaults stay as shipped (keep the 5 newest): what the CLI used to apply.
    env = worker_env(sandbox, app_id=f"opener-{sandbox.name}", DRIFTLOOP_STORE_ROOT=str(store))
    env.pop("DRIFTLOOP_STORE_KEEP_LATEST", None)
    env.pop("DRIFTLOOP_WORKER_MODELS", None)
    examples = make_examples(MODEL, EXAMPLES)
    # the shipped example holds out 10% of the requests: those are never learned
    learned = sum(not is_held_out(e.request_id, 10) for e in examples)
    produce(
        sandbox,
        sandbox.topics.training_examples,
        [(MODEL.encode(), encode(e)) for e in examples],
    )
    worker = WorkerProcess("trainer", env, tmp_path / "worker.log", config=config)
    try:
        read_until(
            sandbox,
            sandbox.topics.checkpoint_events,
            lambda v: any(e.examples_seen >= learned - 60 for e in events(v)),
            timeout_s=180,
        )
    finally:
        code = worker.terminate()
    assert code == 0, worker.text()[-3000:]

    last = newest(store, MODEL)
    assert last is not None
    kept = {m.version for m in manifests(store, MODEL)}
    assert len(kept) < last.seq, "the worker never pruned: too few checkpoints"
    assert len(kept) > 5, "the store defaults would keep as much: the test shows nothing"

    cli_env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOOP_")}
    before = snapshot(store)
    result = checkpoints_cli(
        "gc", "--dry-run", "--json", "--config", str(config), "--store", str(store), env=cli_env
    )
    assert result.returncode == 0, result.stderr
    (plan,) = orjson.loads(result.stdout)["models"]
    assert plan["model"] == MODEL
    assert plan["delete"] == []
    assert plan["leftovers"] == []
    assert plan["quarantine"] == []
    assert set(plan["kept"]) == kept

    for args in (["gc"], ["gc", "--dry-run"], ["tier"]):
        refused = checkpoints_cli(*args, "--store", str(store), env=cli_env)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "model configuration" in refused.stderr
        assert "Traceback" not in refused.stderr
    assert snapshot(store) == before
    assert {m.version for m in manifests(store, MODEL)} == kept
