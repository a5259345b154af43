"""What the validation gateway spends judging one candidate, against loading it.

For the shipped river and torch examples, two signed checkpoints written by
the project's trainer and checkpointer (:func:`benchmarks._serving.write_versions`)
play the live version and the candidate. Per candidate the gateway calls
:meth:`~services.validation.evaluate.StoreEvaluator.evaluate` twice on one
snapshot of the holdout buffer: the candidate (a fresh load: verified read,
restore, finite-weight check, predictions, metric) and the live version
(held loaded in the evaluator's cache, so only predictions and metric). This
benchmark times exactly that pair (and each half: the candidate's includes
its load and its freshly built adapter's first pass over the examples), on
holdout buffers of ``--sizes`` Phishing examples (cycled; the shipped river
example keeps ``promotion.holdout_size = 2000``), after one untimed warm-up,
with the candidate dropped from the cache (``forget``) before each round.

Baseline, same run: :meth:`StoreLoader.load <services.server.loader.StoreLoader.load>`
of the candidate alone (what any consumer of a new version pays, a model
server's swap included); ``ratio`` = gateway cost / load. The figures are
medians of ``--rounds`` rounds (files in the page cache); in process, no
broker.

Run: ``python -m benchmarks.gateway_eval [--sizes 200 2000 10000] [--rounds 7] [--json]``.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from river import datasets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import emit
from benchmarks._serving import Example, write_versions
from services.learning.synthetic import examples_from
from services.server.loader import StoreLoader
from services.validation.base import HoldoutExample
from services.validation.evaluate import StoreEvaluator

EXAMPLES = ("river_logreg", "torch_fm")


def holdout(example: Example, size: int) -> list[HoldoutExample]:
    """``size`` held-out examples of Phishing (its 1,250 rows cycled), ids unique."""
    rows = list(examples_from(datasets.Phishing(), example.model))
    return [
        HoldoutExample(f"h-{i}", e.features, e.label, 1.0, i, "bench")
        for i, e in zip(range(size), itertools.cycle(rows), strict=False)
    ]


def median_s(rounds: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(example: Example, root: Path, sizes: list[int], rounds: int) -> dict[str, Any]:
    store, (live, candidate) = write_versions(root, example, 2)
    model = example.model
    config = example.learning.model(model)
    metric = config.promotion_metric
    loader = StoreLoader(store, example.learning)
    evaluator = StoreEvaluator(loader, {model: config})
    out: dict[str, Any] = {"metric": metric, "sizes": {}}
    try:
        load_s = median_s(rounds, lambda: loader.load(model, candidate))
        out["load_ms"] = load_s * 1e3
        for size in sizes:
            examples = holdout(example, size)
            # warm-up: live loaded and cached (as in the gateway), candidate once
            for version in (live, candidate):
                got = evaluator.evaluate(model, version, examples, metric)
                if not got.passed:
                    raise SystemExit(f"{example.name} {version}: evaluation failed: {got.error}")

            parts: list[tuple[float, float]] = []
            for _ in range(rounds):
                evaluator.forget(model, keep=[live])
                t0 = time.perf_counter()
                evaluator.evaluate(model, candidate, examples, metric)
                t1 = time.perf_counter()
                evaluator.evaluate(model, live, examples, metric)
                parts.append((t1 - t0, time.perf_counter() - t1))
            fresh = statistics.median(p[0] for p in parts)
            cached = statistics.median(p[1] for p in parts)
            total = statistics.median(a + b for a, b in parts)
            out["sizes"][str(size)] = {
                "gateway_ms": total * 1e3,
                "candidate_ms": fresh * 1e3,
                "live_ms": cached * 1e3,
                "ratio_vs_load": total / load_s,
                "live_per_example_us": cached / size * 1e6,
            }
    finally:
        loader.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 2000, 10000])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--example", choices=EXAMPLES, action="append", help="default: both")
    parser.add_argument("--dir", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    workdir = Path(tempfile.mkdtemp(prefix="driftloop-bench-gateway-", dir=args.dir))
    results: dict[str, Any] = {"rounds": args.rounds, "examples": {}}
    try:
        for name in args.example or EXAMPLES:
            print(f"{name}: writing checkpoints and timing ...", file=sys.stderr, flush=True)
            example = Example.of(name)
            results["examples"][name] = measure(example, workdir / name, args.sizes, args.rounds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    table = [
        f"gateway cost per candidate: evaluate(candidate, fresh load) + evaluate(live, cached),"
        f" median of {args.rounds}; baseline: StoreLoader.load of the candidate",
        f"{'example':<14} {'holdout':>8} {'gateway ms':>11} {'load ms':>9} {'ratio':>7}"
        f" {'candidate ms':>13} {'live ms':>8} {'live us/ex':>10}",
    ]
    for name, r in results["examples"].items():
        for size, s in r["sizes"].items():
            table.append(
                f"{name:<14} {size:>8} {s['gateway_ms']:11.1f} {r['load_ms']:9.1f}"
                f" {s['ratio_vs_load']:6.1f}x {s['candidate_ms']:13.1f} {s['live_ms']:8.1f}"
                f" {s['live_per_example_us']:10.1f}"
            )
    emit(results, args.json, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
