"""Throughput cost of checkpointing a training loop, against not checkpointing at all.

A ~1M-parameter MLP (``--size``) is trained with Adam on batches of
``--batch`` examples, three ways in the same run:

- ``none``: no checkpoints, the baseline;
- ``driftloop``: :meth:`Checkpointer.save` every ``--every`` examples with the
  default policy (the trainer's default count trigger, 10,000 examples; async
  saves, differential, fsync'd commits);
- ``torch.save``: a synchronous ``torch.save`` at the same points, for reference.

The machine is shared and its load drifts, so the modes take turns: each
turn trains one mode for ``--segment`` checkpoint intervals, ``--rounds``
turns per mode, and each mode's time is summed over its turns. A driftloop
turn ends by waiting for its last save to commit (that wait is counted, so
the figure is an upper bound). Overhead = 1 - rate / baseline rate (the
anchor: CheckFreq bounds checkpoint overhead at 3.5%).

Run: ``python -m benchmarks.checkpoint_overhead [--size 1] [--every 10000] [--json]``.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import emit, mlp, n_params, store, train_step
from services.checkpoints.checkpointer import Checkpointer, CheckpointerConfig
from services.checkpoints.state.torch_state import TorchAdapter
from services.checkpoints.store import CheckpointStore


class Run:
    """One mode's model, optimizer and checkpoint target, trained turn by turn."""

    def __init__(self, mode: str, size: float, batch: int, every: int, root: str | None) -> None:
        torch.manual_seed(0)
        self.mode, self.batch, self.every = mode, batch, every
        self.module = mlp(size)
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=1e-4)
        self.store: CheckpointStore
        self.store, self.tmp = store(root)
        self.checkpointer = (
            Checkpointer(self.store, CheckpointerConfig()) if mode == "driftloop" else None
        )
        self.adapter = TorchAdapter(self.module, self.optimizer)
        self.step = self.saves = 0
        self.elapsed = 0.0
        train_step(self.module, self.optimizer, batch)  # warm up

    def turn(self, intervals: int) -> None:
        steps = max(1, self.every // self.batch) * intervals
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step += 1
            train_step(self.module, self.optimizer, self.batch)
            seen = self.step * self.batch
            if self.mode != "none" and seen // self.every != (seen - self.batch) // self.every:
                self.saves += 1
                if self.checkpointer is not None:
                    self.checkpointer.save(
                        "bench", self.adapter, step=self.step, examples_seen=seen
                    )
                else:
                    state = {
                        "model": self.module.state_dict(),
                        "optimizer": self.optimizer.state_dict(),
                    }
                    torch.save(state, Path(self.tmp) / "torch.pt")
        if self.checkpointer is not None:
            self.checkpointer.wait()
        self.elapsed += time.perf_counter() - t0

    def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.close()
        self.store.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=float, default=1.0, help="model size, millions of params")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--every", type=int, default=10_000, help="examples between checkpoints")
    parser.add_argument("--segment", type=int, default=3, help="checkpoint intervals per turn")
    parser.add_argument("--rounds", type=int, default=4, help="turns per mode")
    parser.add_argument("--dir", default=None, help="where the stores go")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    runs = {
        m: Run(m, args.size, args.batch, args.every, args.dir)
        for m in ("none", "driftloop", "torch.save")
    }
    try:
        for _ in range(args.rounds):
            for run in runs.values():
                run.turn(args.segment)
    finally:
        for run in runs.values():
            run.close()
    rates = {m: r.step / r.elapsed for m, r in runs.items()}
    base = rates["none"]
    results: dict[str, Any] = {
        "params": n_params(runs["none"].module),
        "steps_per_mode": runs["none"].step,
        "batch": args.batch,
        "every_examples": args.every,
    }
    table = [
        f"training throughput, {results['params']:,} params, batch {args.batch}, "
        f"{results['steps_per_mode']} steps per mode in {args.rounds} turns, "
        f"checkpoint every {args.every} examples",
        f"{'mode':<12} {'steps/s':>9} {'saves':>6} {'overhead':>9}   (anchor: CheckFreq <= 3.5%)",
    ]
    for mode, rate in rates.items():
        overhead = 1 - rate / base
        results[mode] = {"steps_per_s": rate, "saves": runs[mode].saves, "overhead": overhead}
        table.append(f"{mode:<12} {rate:>9.1f} {runs[mode].saves:>6} {overhead:>8.2%}")
    emit(results, args.json, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
