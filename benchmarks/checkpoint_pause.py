"""Training pause per checkpoint: driftloop's async save vs a synchronous ``torch.save``.

For MLPs of about 1M, 10M and 50M parameters trained with Adam, each
checkpoint of model + optimizer state is taken after training for at least
``--min-interval`` seconds and ``--interval-factor`` (5) times a synchronous
save's time (real checkpoint intervals are long against a save), and the time
the training loop is stopped is measured for:

- ``torch.save``: a synchronous ``torch.save`` of ``{"model", "optimizer"}``
  state dicts to a file (no fsync), the baseline;
- ``async copy``: :meth:`Checkpointer.submit` with the default config (async,
  snapshot by ``copy_`` into reused buffers, differential saves on, fsync on)
  under the online trainer's back-pressure policy for count and interval
  checkpoints: when the pending saves leave no room (``max_in_flight`` /
  ``max_pending_mb``), the checkpoint is *coalesced* — not taken, nothing
  copied, training goes on — and the next one covers it (the count is
  printed);
- ``async clone``: the same with snapshots by ``clone()``;
- ``async wait``: :meth:`Checkpointer.save`, which waits for room instead —
  what a drift, metric, manual, config-change or shutdown checkpoint pays,
  since those are never coalesced;
- ``memcpy``: a plain in-memory copy of the same tensors into preallocated
  buffers — the floor any consistent snapshot pays; timed right before every
  checkpoint of every mode, so it sees the same machine load.

Printed per size: p50 and p99 pause of each (over every checkpoint due,
coalesced ones included), the ratio torch.save / async (p50 and p99), the
async p50 and p99 as multiples of the memcpy's p50 and p99 (the target: p99
within 1.5x), the p99 of each checkpoint's pause over the memcpy timed right
before it ("paired", robust to load drift), how many checkpoints were
coalesced, and the mean background time per async save (snapshot to
committed).

Run: ``python -m benchmarks.checkpoint_pause [--sizes 1,10,50] [--reps 12] [--json]``;
the default sizes are 1M and 10M (50M takes several minutes).
"""

from __future__ import annotations

import argparse
import gc
import shutil
import time
from concurrent.futures import Future
from typing import Any

import torch

from benchmarks._common import emit, mlp, n_params, pct, store, train_step
from schemas.manifest import CheckpointManifest
from services.checkpoints.checkpointer import Checkpointer, CheckpointerConfig
from services.checkpoints.state.torch_state import TorchAdapter

#: The async modes: name -> (snapshot mode, wait for room instead of coalescing).
ASYNC: dict[str, tuple[str, bool]] = {
    "async copy": ("copy", False),
    "async clone": ("clone", False),
    "async wait": ("copy", True),
}


def state_tensors(module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    out = list(module.state_dict().values())
    for values in optimizer.state.values():
        out += [t for t in values.values() if isinstance(t, torch.Tensor)]
    return out


def measure_size(
    millions: float,
    reps: int,
    between: int,
    min_interval: float,
    factor: float,
    root: str | None,
) -> dict[str, Any]:
    torch.manual_seed(0)
    module = mlp(millions)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-4)
    train_step(module, optimizer)
    pauses: dict[str, list[float]] = {name: [] for name in ("memcpy", "torch.save", *ASYNC)}
    tensors = state_tensors(module, optimizer)
    buffers = [torch.empty_like(t) for t in tensors]
    background: dict[str, list[float]] = {name: [] for name in ASYNC}
    coalesced: dict[str, int] = dict.fromkeys(ASYNC, 0)
    #: Per checkpoint, its pause over the memcpy timed right before it (same load).
    paired: dict[str, list[float]] = {}
    counting = [False]

    interval = [0.0]

    def memcpy() -> None:
        for buf, t in zip(buffers, tensors, strict=True):
            buf.copy_(t)

    def loop(name: str, checkpoint: Any) -> None:
        for i in range(reps + 1):  # the first round warms up, not counted
            counting[0] = i > 0
            t_end = time.perf_counter() + interval[0]
            for _ in range(between):
                train_step(module, optimizer)
            while time.perf_counter() < t_end:
                train_step(module, optimizer)
            t0 = time.perf_counter()
            memcpy()  # the baseline, measured next to every checkpoint (the machine drifts)
            t1 = time.perf_counter()
            checkpoint()
            if i:
                pauses["memcpy"].append(t1 - t0)
                pauses[name].append(time.perf_counter() - t1)
                paired.setdefault(name, []).append((time.perf_counter() - t1) / (t1 - t0))

    bench_store, tmp = store(root)
    try:
        target = tmp / "torch.pt"
        loop(
            "torch.save",
            lambda: torch.save(
                {"model": module.state_dict(), "optimizer": optimizer.state_dict()}, target
            ),
        )
        # Checkpoint intervals are long against a save: train >= factor x a sync save's time.
        interval[0] = max(min_interval, factor * pct(pauses["torch.save"], 0.5))
        adapter = TorchAdapter(module, optimizer)
        for name, (mode, wait) in ASYNC.items():
            checkpointer = Checkpointer(bench_store, CheckpointerConfig(snapshot=mode))
            started: list[float] = []

            def done(
                _: Future[CheckpointManifest], name: str = name, started: list[float] = started
            ) -> None:
                background[name].append(time.perf_counter() - started[-1])

            def save(
                checkpointer: Checkpointer = checkpointer,
                started: list[float] = started,
                name: str = name,
                wait: bool = wait,
            ) -> None:
                started.append(time.perf_counter())
                future = checkpointer.submit(
                    "bench", adapter, block=wait, step=0, trigger="interval"
                )
                if future is None:
                    started.pop()
                    coalesced[name] += counting[0]
                else:
                    future.add_done_callback(done)

            loop(name, save)
            checkpointer.close()
            del checkpointer
            gc.collect()
    finally:
        bench_store.close()
        shutil.rmtree(tmp, ignore_errors=True)
    state_mb = sum(t.numel() * t.element_size() for t in tensors) / 1e6
    result: dict[str, Any] = {
        "params": n_params(module),
        "state_mb": round(state_mb, 1),
        "interval_s": round(interval[0], 3),
    }
    for name, values in pauses.items():
        result[name] = {"p50_ms": pct(values, 0.5) * 1e3, "p99_ms": pct(values, 0.99) * 1e3}
    for name, values in background.items():
        result[name]["background_mean_ms"] = sum(values) / max(1, len(values)) * 1e3
        result[name]["coalesced"] = coalesced[name]
    base, floor = result["torch.save"], result["memcpy"]
    for name in ASYNC:
        r = result[name]
        r["speedup_p50_vs_torch_save"] = base["p50_ms"] / r["p50_ms"]
        r["speedup_p99_vs_torch_save"] = base["p99_ms"] / r["p99_ms"]
        r["pause_p50_vs_memcpy"] = r["p50_ms"] / floor["p50_ms"]
        r["pause_p99_vs_memcpy"] = r["p99_ms"] / floor["p99_ms"]
        r["paired_ratio_p99"] = pct(paired[name], 0.99)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--sizes", default="1,10", help="model sizes, millions of params (50: slow)"
    )
    parser.add_argument("--reps", type=int, default=12, help="checkpoints measured per mode")
    parser.add_argument("--steps-between", type=int, default=5, help="min training steps between")
    parser.add_argument(
        "--min-interval",
        type=float,
        default=0.25,
        help="min seconds of training between checkpoints",
    )
    parser.add_argument(
        "--interval-factor",
        type=float,
        default=5.0,
        help="train at least this many torch.save times between checkpoints",
    )
    parser.add_argument("--dir", default=None, help="where the store and torch.save file go")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    results = {}
    table = [
        f"checkpoint pause, {args.reps} checkpoints per mode, Adam steps for >= max("
        f"{args.min_interval}s, {args.interval_factor:g}x torch.save) between",
        f"{'size':>6} {'state MB':>9} {'mode':<12} {'p50 ms':>9} {'p99 ms':>9} "
        f"{'save/async p50':>15} {'p99':>7} {'x memcpy p50':>13} {'p99':>6} "
        f"{'paired p99':>11} {'coalesced':>10} {'bg ms':>8}",
    ]
    for size in (float(s) for s in args.sizes.split(",")):
        r = measure_size(
            size, args.reps, args.steps_between, args.min_interval, args.interval_factor, args.dir
        )
        results[f"{size:g}M"] = r
        for name in ("memcpy", "torch.save", *ASYNC):
            m = r[name]
            extra = ""
            if name in ASYNC:
                extra = (
                    f"{m['speedup_p50_vs_torch_save']:>14.1f}x "
                    f"{m['speedup_p99_vs_torch_save']:>6.1f}x "
                    f"{m['pause_p50_vs_memcpy']:>12.2f}x {m['pause_p99_vs_memcpy']:>5.2f}x "
                    f"{m['paired_ratio_p99']:>10.2f}x {m['coalesced']:>10} "
                    f"{m['background_mean_ms']:>8.0f}"
                )
            table.append(
                f"{size:>5g}M {r['state_mb']:>9.0f} {name:<12} {m['p50_ms']:>9.2f} "
                f"{m['p99_ms']:>9.2f} {extra}"
            )
    table.append(
        "back-pressure: 'async copy'/'async clone' coalesce a due checkpoint while the pending"
        " saves leave no room (the trainer's policy for count and interval checkpoints);"
        " 'async wait' waits (drift, metric, manual, config-change, shutdown)"
    )
    emit(results, args.json, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
