"""Throughput cost of checkpointing a training loop, against not checkpointing at all.

A ~1M-parameter MLP (``--size``) is trained with Adam on batches of
``--batch`` examples for ``--steps`` steps, three ways in the same run:

- ``none``: no checkpoints, the baseline;
- ``driftloop``: :meth:`Checkpointer.save` every ``--every`` examples with the
  default policy (the trainer's default count trigger, 10,000 examples; async,
  differential, fsync'd commits);
- ``torch.save``: a synchronous ``torch.save`` at the same points, for reference.

Printed: steps/s of each, and overhead = 1 - rate / baseline rate (the
anchor: CheckFreq bounds checkpoint overhead at 3.5%). Runs are interleaved
``--rounds`` times and the best round of each kept (the machine is shared).

Run: ``python benchmarks/checkpoint_overhead.py [--size 1] [--every 10000] [--json]``.
"""

from __future__ import annotations

import argparse
import shutil
import time
from typing import Any

import torch
from _common import emit, mlp, n_params, store, train_step

from services.checkpoints.checkpointer import Checkpointer, CheckpointerConfig
from services.checkpoints.state.torch_state import TorchAdapter


def run(
    mode: str, size: float, steps: int, batch: int, every: int, root: str | None
) -> tuple[float, int]:
    torch.manual_seed(0)
    module = mlp(size)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-4)
    bench_store, tmp = store(root)
    checkpointer = Checkpointer(bench_store, CheckpointerConfig()) if mode == "driftloop" else None
    adapter = TorchAdapter(module, optimizer)
    saves = 0
    try:
        train_step(module, optimizer, batch)  # warm up
        t0 = time.perf_counter()
        for step in range(1, steps + 1):
            train_step(module, optimizer, batch)
            if mode != "none" and (step * batch) // every != ((step - 1) * batch) // every:
                saves += 1
                if checkpointer is not None:
                    checkpointer.save("bench", adapter, step=step, examples_seen=step * batch)
                else:
                    state = {"model": module.state_dict(), "optimizer": optimizer.state_dict()}
                    torch.save(state, tmp / "torch.pt")
        if checkpointer is not None:
            checkpointer.close()  # the last save's tail is part of the run's cost
        elapsed = time.perf_counter() - t0
    finally:
        bench_store.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return steps / elapsed, saves


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=float, default=1.0, help="model size, millions of params")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--every", type=int, default=10_000, help="examples between checkpoints")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where the stores go")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    best: dict[str, float] = {}
    saves: dict[str, int] = {}
    for _ in range(args.rounds):
        for mode in ("none", "driftloop", "torch.save"):
            rate, n = run(mode, args.size, args.steps, args.batch, args.every, args.dir)
            best[mode] = max(best.get(mode, 0.0), rate)
            saves[mode] = n
    base = best["none"]
    results: dict[str, Any] = {
        "params": n_params(mlp(args.size)),
        "steps": args.steps,
        "batch": args.batch,
        "every_examples": args.every,
    }
    table = [
        f"training throughput, {n_params(mlp(args.size)):,} params, batch {args.batch}, "
        f"{args.steps} steps, checkpoint every {args.every} examples, best of {args.rounds}",
        f"{'mode':<12} {'steps/s':>9} {'saves':>6} {'overhead':>9}   (anchor: CheckFreq <= 3.5%)",
    ]
    for mode, rate in best.items():
        overhead = 1 - rate / base
        results[mode] = {"steps_per_s": rate, "saves": saves[mode], "overhead": overhead}
        table.append(f"{mode:<12} {rate:>9.1f} {saves[mode]:>6} {overhead:>8.2%}")
    emit(results, args.json, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
