"""Exactly-once model state: kill -9 the trainer at random moments, compare with a clean run.

A fixed log of TrainingExamples (with duplicates) is appended slice by slice
while a ``driftloop worker --role trainer`` subprocess consumes it; the
process is killed with SIGKILL at >= 20 random moments (during start-up,
restore, training and checkpointing) and restarted each time, always in the
same consumer group, so faust finds committed offsets that may be ahead of
the newest checkpoint. A second, uninterrupted worker (another group, another
store) then consumes the same log. Both must end in the same state bit for
bit: state digest, example digest, step, examples seen, offsets, metrics —
and every checkpoint the killed runs committed must equal the clean run's
checkpoint at the same input position. The model holds out 10% of the
requests (the shipped share): both runs must skip and count the same ones.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from river.datasets import synth

from schemas.codec import decode, encode
from schemas.events import TrainingExample, training_example_id
from schemas.manifest import CheckpointManifest
from services.kafka import make_producer
from services.learning.pool import partition_of
from services.validation.base import is_held_out
from tests.integration import _procs as procs
from tests.integration._procs import manifests, newest

if TYPE_CHECKING:
    from tests.integration.conftest import Sandbox

#: ``driftloop worker --role trainer`` with this interpreter and source tree.
WORKER = [
    sys.executable,
    "-c",
    "from services.cli import main; main()",
    "worker",
    "--role",
    "trainer",
]
MODEL = "eo-logreg"
BATCH = 10
EVERY_N = 50
HOLDOUT = 10.0

MODEL_TOML = f"""
[[model]]
name = "{MODEL}"
kind = "river"
seed = 3
batch_size = {BATCH}
dedup_horizon = 100000
factory = {{ path = "river.linear_model.LogisticRegression" }}

[model.triggers]
every_n = {EVERY_N}
on_drift = true
on_shutdown = true
adaptive = {{ min_every_n = 20, shrink = 0.5, relax = 2.0, settle_tolerance = 0.05 }}

[[model.drift]]
kind = "ADWIN"
input = "error"

[model.promotion]
holdout_percent = {HOLDOUT}
"""


def make_examples(model: str, n: int, *, seed: int = 11) -> list[TrainingExample]:
    """``n`` distinct TrainingExamples of ``model`` from a drifting synthetic stream."""
    stream = synth.ConceptDriftStream(
        stream=synth.SEA(seed=seed, variant=0),
        drift_stream=synth.SEA(seed=seed, variant=2),
        position=n // 2,
        width=50,
        seed=seed,
    )
    out: list[TrainingExample] = []
    for i, (x, y) in enumerate(stream.take(n)):
        rid, fid = f"{model}-r{i}", f"{model}-f{i}"
        out.append(
            TrainingExample.new(
                event_id=f"{model}-e{i}",
                ts=1_700_000_000_000 + i,
                example_id=training_example_id(rid, fid),
                request_id=rid,
                model=model,
                model_version="v0",
                features={str(k): float(v) for k, v in x.items()},
                label=bool(y),
                inference_event_id=f"{model}-i{i}",
                feedback_event_id=fid,
                inference_ts=1_700_000_000_000 + i,
                feedback_ts=1_700_000_000_500 + i,
                join_latency_ms=500,
            )
        )
    return out


def with_duplicates(examples: list[TrainingExample], every: int, rng: random.Random) -> list[bytes]:
    """The log: each example once, plus a repeat of a recent one after every ``every``-th;
    it ends with a first occurrence, so the last batch completes on the last record."""
    log: list[bytes] = []
    for i, ex in enumerate(examples):
        log.append(encode(ex))
        if i % every == every - 1 and i < len(examples) - 1:
            log.append(encode(examples[rng.randrange(max(0, i - 30), i + 1)]))
    return log


def produce(sandbox: Sandbox, key: str, values: list[bytes]) -> None:
    producer = make_producer(sandbox.kafka, linger_ms=5)
    for value in values:
        producer.send(sandbox.topics.training_examples, key=key.encode(), value=value)
    producer.flush()
    producer.close()


def worker_env(sandbox: Sandbox, *, store: Path, app_id: str) -> dict[str, str]:
    # Offsets committed to the group run ahead of the checkpoints: a worker
    # that resumed from them instead of its checkpoint would skip examples.
    return procs.worker_env(
        sandbox, app_id=app_id, store=store, commit_interval_s=0.05, DRIFTLOOP_WORKER_CHUNK="100"
    )


class TrainerProcess:
    """A ``driftloop worker --role trainer`` subprocess writing its log to a file."""

    def __init__(self, env: dict[str, str], config: Path, log: Path) -> None:
        self.log = log
        self._out = log.open("ab")
        self.proc = subprocess.Popen(
            [*WORKER, "--config", str(config)],
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        self._start = log.stat().st_size

    def text(self) -> str:
        with self.log.open("rb") as f:
            f.seek(self._start)
            return f.read().decode(errors="replace")

    def wait_assigned(self, timeout_s: float = 60.0) -> bool:
        """Until the worker has restored and sought its partitions (False: it died)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if "trainer owns partitions" in self.text():
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.05)
        raise AssertionError(f"trainer not assigned in time:\n{self.text()[-3000:]}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._out.close()

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self._out.close()
        return code


def wait_caught_up(sandbox: Sandbox, records: int, proc: TrainerProcess) -> None:
    """Until the worker reports it has handled every one of the ``records`` of its
    model's partition (the high watermark its fetches carry), checkpoints included."""
    partition = partition_of(MODEL, sandbox.topics.partitions)
    marker = f"trainer caught up: partition {partition} at offset {records}"
    deadline = time.monotonic() + 90.0
    while time.monotonic() < deadline:
        if marker in proc.text():
            return
        assert proc.proc.poll() is None, proc.text()[-3000:]
        time.sleep(0.1)
    raise AssertionError(f"trainer did not catch up:\n{proc.text()[-3000:]}")


@pytest.fixture
def processes() -> Iterator[list[TrainerProcess]]:
    started: list[TrainerProcess] = []
    yield started
    for p in started:
        if p.proc.poll() is None:
            p.kill()


def facts(m: CheckpointManifest) -> dict[str, object]:
    return {
        "state_digest": m.state_digest,
        "example_digest": m.example_digest,
        "step": m.step,
        "examples_seen": m.examples_seen,
        "offsets": m.offsets,
        "metrics": m.metrics,
        "trigger": m.trigger,
        "held_out": m.extra.get("held_out"),
    }


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_kill_9_at_random_moments_ends_bitwise_equal_to_a_clean_run(
    sandbox: Sandbox, tmp_path: Path, processes: list[TrainerProcess]
) -> None:
    rng = random.Random(20261127)
    learned = 1800
    examples = make_examples(MODEL, 2200)
    # The log ends on the 1,800th example not held out: the last batch completes on it.
    learned_at = [i for i, e in enumerate(examples) if not is_held_out(e.request_id, HOLDOUT)]
    examples = examples[: learned_at[learned - 1] + 1]
    log = with_duplicates(examples, 8, rng)
    held = sum(is_held_out(decode(TrainingExample, v).request_id, HOLDOUT) for v in log)
    assert 0 < held < len(log) // 5
    slices = 24
    cut = [len(log) * i // slices for i in range(slices + 1)]
    config = tmp_path / "models.toml"
    config.write_text(MODEL_TOML)

    killed_store = tmp_path / "killed"
    env = worker_env(sandbox, store=killed_store, app_id=f"trainer-{sandbox.name}")
    kills, produced = 0, 0
    while produced < slices or kills < 20:
        proc = TrainerProcess(env, config, tmp_path / "killed.log")
        processes.append(proc)
        if rng.random() < 0.15:  # now and then, during start-up / restore / join
            time.sleep(rng.uniform(0.2, 3.0))
        else:
            assert proc.wait_assigned(), proc.text()[-3000:]
            if produced < slices:
                produce(sandbox, MODEL, log[cut[produced] : cut[produced + 1]])
                produced += 1
            time.sleep(rng.uniform(0.0, 0.4))
        proc.kill()
        kills += 1
    assert kills >= 20

    # The last start runs to the end and stops on SIGTERM.
    last = TrainerProcess(env, config, tmp_path / "killed.log")
    processes.append(last)
    wait_caught_up(sandbox, len(log), last)
    assert last.terminate() == 0

    clean_store = tmp_path / "clean"
    clean_env = worker_env(sandbox, store=clean_store, app_id=f"clean-{sandbox.name}")
    clean = TrainerProcess(clean_env, config, tmp_path / "clean.log")
    processes.append(clean)
    wait_caught_up(sandbox, len(log), clean)
    assert clean.terminate() == 0

    final_killed, final_clean = newest(killed_store, MODEL), newest(clean_store, MODEL)
    assert final_killed is not None
    assert final_clean is not None
    assert final_clean.examples_seen == learned
    home = partition_of(MODEL, sandbox.topics.partitions)
    assert final_clean.offsets == {sandbox.topics.training_examples: {str(home): len(log)}}
    assert facts(final_killed) == facts(final_clean)
    # Every checkpoint the interrupted runs committed is the clean run's at that position.
    clean_at = {m.examples_seen: facts(m) for m in manifests(clean_store, MODEL)}
    for m in manifests(killed_store, MODEL):
        assert facts(m) == clean_at.get(m.examples_seen), m.version
    # held-out records, first or repeated, are counted as held out, not as duplicates
    assert final_clean.extra["held_out"] == held
    duplicates = len(log) - held - learned
    assert final_clean.extra["duplicates"] == duplicates
