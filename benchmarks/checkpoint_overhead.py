"""Throughput cost of checkpointing the online trainer, against not checkpointing at all.

The torch example model (``torch_fm``: a hashed factorization machine of
about 2.4M parameters, Adagrad) is trained by :class:`OnlineTrainer` on
Agrawal examples in batches of 64 (holdout off: every example is learned),
three ways in the same run:

- ``none``: no checkpoint trigger, the baseline;
- ``driftloop``: the trainer's real sink — :class:`CheckpointerSink` over a
  :class:`Checkpointer` with the default config (async, differential,
  fsync'd commits into a real store) — with a count checkpoint every
  ``--every`` examples (the default policy: 10,000). The training path pays
  for the snapshot; count checkpoints due while a commit is pending are
  coalesced (the count is printed);
- ``sync``: the same sink committing on the training thread
  (``async_saves=False``), i.e. what the trainer paid before commits left
  the training path.

Drift and adaptive triggers are off so that every mode takes the same
checkpoints. The machine is shared and its load drifts, so the modes take
turns: each turn trains one mode on ``--segment`` checkpoint intervals of
examples, ``--rounds`` turns per mode, and each mode's time is summed over
its turns; each round starts with the next mode, so that every mode takes
every position in a round equally often. A ``driftloop`` turn ends by
waiting for its pending commits (that wait is counted, so the figure is an
upper bound). Overhead = 1 - rate / baseline rate (the anchor: CheckFreq
bounds checkpoint overhead at 3.5%); also printed, the median over rounds of
each round's overhead against the baseline's turn of that round, which a
drifting machine load disturbs less, and how long each save held the
training thread (p50 and max, the first, full, save left out), and the
training thread's CPU time per example over the baseline's (``time.thread_time``:
what the training path itself spends, which other processes on a shared
machine do not inflate).

Run: ``python -m benchmarks.checkpoint_overhead [--every 10000] [--rounds 6] [--json]``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
from river.datasets import synth

from benchmarks._common import emit, store
from services.checkpoints.checkpointer import Checkpointer, CheckpointerConfig
from services.checkpoints.store import CheckpointStore
from services.learning.config import ModelConfig, example_path, load_config
from services.learning.sink import Committed, InMemorySink, TrainerSnapshot
from services.learning.store_sink import CheckpointerSink
from services.learning.synthetic import LocalExample
from services.learning.trainer import OnlineTrainer

MODES = ("none", "driftloop", "sync")


def model_config(every: int | None) -> ModelConfig:
    """The torch example with only the count trigger (or none), and no holdout:
    every example is learned, so an interval is ``every`` examples of training."""
    config = load_config(example_path("torch_fm")).model("torch-fm")
    triggers = config.triggers.model_copy(
        update={"every_n": every, "adaptive": None, "on_drift": False, "on_shutdown": False}
    )
    promotion = config.promotion.model_copy(update={"holdout_percent": 0})
    return config.model_copy(update={"name": "bench", "triggers": triggers, "promotion": promotion})


def make_examples(n: int, seed: int = 5) -> list[LocalExample]:
    """``n`` Agrawal examples with unique ids (the trainer drops repeated ids)."""
    out = []
    for i, (x, y) in enumerate(synth.Agrawal(seed=seed).take(n)):
        features = {
            str(k): (float(v) if isinstance(v, int | float) else str(v)) for k, v in x.items()
        }
        out.append(LocalExample(f"ex-{i}", "bench", features, bool(y)))
    return out


class TimedSink(CheckpointerSink):
    """The real sink, timing how long each save holds the training thread."""

    def __init__(self, checkpointer: Checkpointer) -> None:
        super().__init__(checkpointer)
        self.held: list[float] = []

    def submit(self, snapshot: TrainerSnapshot, *, block: bool = True) -> Future[Committed] | None:
        t0 = time.perf_counter()
        future = super().submit(snapshot, block=block)
        if self.checkpointer.saver is None and future is not None:
            future.exception()  # synchronous: already committed
        self.held.append(time.perf_counter() - t0)
        return future


class Run:
    """One mode's trainer and store, trained turn by turn on the same examples."""

    def __init__(self, mode: str, every: int, root: str | None) -> None:
        torch.manual_seed(0)
        self.mode = mode
        self.store: CheckpointStore | None = None
        self.tmp: Path | None = None
        self.checkpointer: Checkpointer | None = None
        if mode == "none":
            self.trainer = OnlineTrainer(model_config(None), InMemorySink())
        else:
            self.store, self.tmp = store(root)
            self.checkpointer = Checkpointer(
                self.store, CheckpointerConfig(async_saves=mode == "driftloop")
            )
            self.trainer = OnlineTrainer(model_config(every), TimedSink(self.checkpointer))
        self.position = 0
        self.elapsed = 0.0
        #: CPU seconds of the training thread (time.thread_time) over the timed turns.
        self.cpu = 0.0
        self.saves = 0
        #: Examples per second of each timed turn.
        self.turn_rates: list[float] = []

    def turn(self, examples: list[LocalExample], count: int) -> None:
        trainer = self.trainer
        t0 = time.perf_counter()
        c0 = time.thread_time()
        for example in examples[self.position : self.position + count]:
            outcome = trainer.process(example, topic="bench", partition=0, offset=self.position)
            self.saves += len(outcome.checkpoints)
            self.position += 1
        self.saves += len(trainer.wait_commits())
        seconds = time.perf_counter() - t0
        self.cpu += time.thread_time() - c0
        self.elapsed += seconds
        self.turn_rates.append(count / seconds)

    def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.close()
        if self.store is not None:
            self.store.close()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--every", type=int, default=10_000, help="examples between checkpoints")
    parser.add_argument("--segment", type=int, default=1, help="checkpoint intervals per turn")
    parser.add_argument(
        "--rounds", type=int, default=6, help="turns per mode (a multiple of 3: fair order)"
    )
    parser.add_argument("--warmup", type=int, default=2_000, help="examples before timing")
    parser.add_argument("--dir", default=None, help="where the stores go")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    per_turn = args.segment * args.every
    examples = make_examples(args.warmup + per_turn * args.rounds)
    runs = {m: Run(m, args.every, args.dir) for m in MODES}
    try:
        for run in runs.values():  # warm up (not timed, before the first checkpoint)
            run.turn(examples, args.warmup)
            run.elapsed, run.cpu, run.turn_rates = 0.0, 0.0, []
        for r in range(args.rounds):
            # The position in a round matters on a loaded machine (measured: the first
            # turn of a round is the slowest): each round starts with the next mode.
            shift = r % len(MODES)
            for mode in MODES[shift:] + MODES[:shift]:
                runs[mode].turn(examples, per_turn)
    finally:
        for run in runs.values():
            run.close()
    rates = {m: (r.position - args.warmup) / r.elapsed for m, r in runs.items()}
    base = rates["none"]
    cpu_per_example = {m: r.cpu / (r.position - args.warmup) for m, r in runs.items()}
    trainer = runs["none"].trainer
    params = sum(t.numel() for t in trainer.adapter.live_objects()["module"].parameters())
    results: dict[str, Any] = {
        "params": params,
        "examples_per_mode": per_turn * args.rounds,
        "batch": trainer.config.batch_size,
        "every_examples": args.every,
    }
    table = [
        f"online trainer throughput, torch_fm {params:,} params, batch "
        f"{results['batch']}, {results['examples_per_mode']:,} examples per mode in "
        f"{args.rounds} turns, count checkpoint every {args.every:,} examples",
        f"{'mode':<10} {'examples/s':>11} {'saves':>6} {'coalesced':>10} {'overhead':>9} "
        f"{'median/round':>13} {'thread CPU':>11} {'held ms p50':>12} {'max':>7}"
        "   (anchor: CheckFreq <= 3.5%)",
    ]
    baseline_turns = runs["none"].turn_rates
    for mode, rate in rates.items():
        overhead = 1 - rate / base
        # Against the baseline's turn of the same round: robust to a load that drifts.
        per_round = statistics.median(
            1 - r / b for r, b in zip(runs[mode].turn_rates, baseline_turns, strict=True)
        )
        coalesced = runs[mode].trainer.coalesced
        sink = runs[mode].trainer.sink
        held = sink.held[1:] if isinstance(sink, TimedSink) else []  # the first is a full save
        held_p50 = statistics.median(held) * 1e3 if held else 0.0
        held_max = max(held) * 1e3 if held else 0.0
        cpu_overhead = cpu_per_example[mode] / cpu_per_example["none"] - 1
        results[mode] = {
            "examples_per_s": rate,
            "training_thread_cpu_overhead": cpu_overhead,
            "saves": runs[mode].saves,
            "coalesced": coalesced,
            "overhead": overhead,
            "median_round_overhead": per_round,
            "held_ms_p50": held_p50,
            "held_ms_max": held_max,
        }
        table.append(
            f"{mode:<10} {rate:>11.0f} {runs[mode].saves:>6} {coalesced:>10} {overhead:>8.2%} "
            f"{per_round:>12.2%} {cpu_overhead:>10.2%} {held_p50:>12.1f} {held_max:>7.1f}"
        )
    table.append(
        "thread CPU: the training thread's CPU time per example over the baseline's"
        " (time.thread_time: not slowed by other processes, unlike the wall-clock figures,"
        " but blind to waiting for the CPU or the GIL)"
    )
    emit(results, args.json, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
