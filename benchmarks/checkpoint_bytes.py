"""Bytes written per checkpoint: differential vs full saves, with and without int8.

An embedding model (``--rows`` x ``--dim``, default 1M x 64, plus a small
dense head) is trained with SparseAdam; between checkpoints ``--touched``
(1%) of the rows are updated. ``--intervals`` checkpoints are taken after an
initial one, under four configurations in the same run:

- ``full``: every checkpoint full (differential saves off) — the baseline;
- ``delta``: differential saves (changed rows + references), the default;
- ``full+int8`` / ``delta+int8``: the same, also writing the row-wise int8
  variant of the model group (the cold-tier copy). Its bytes are reported
  apart (``int8 MB``) from the exact state's, and compared with the full
  fp32 model group (weights only: the int8 copy holds no optimizer state).

Reported per configuration: mean bytes written per interval checkpoint (what
the store actually wrote: files referenced from older checkpoints excluded),
and ratio full / this. A differential configuration decides itself when to
write the next full checkpoint (once the chain's deltas wrote
``full_after_fraction`` of the base's bytes, at most ``full_every`` deltas):
it is run until that happens (at most ``--max-intervals``), and
``amortized`` is the mean over that whole cycle — the full checkpoint that
started it and every delta of its chain — with the cycle's length (``deltas
per full``) and the chain's bytes over its base's (what a load of the
chain's last checkpoint reads beyond a full one). ``full`` configurations run
``--intervals`` checkpoints. The anchor: Check-N-Run reports 6-17x less
write bandwidth from differential + quantized checkpoints.

Run: ``python -m benchmarks.checkpoint_bytes [--rows 1000000] [--dim 64] [--json]``.
"""

from __future__ import annotations

import argparse
import shutil
from typing import Any

import torch

from benchmarks._common import emit, store
from schemas.manifest import CheckpointManifest
from services.checkpoints.checkpointer import Checkpointer, CheckpointerConfig
from services.checkpoints.state.torch_state import TorchAdapter


class EmbeddingModel(torch.nn.Module):
    def __init__(self, rows: int, dim: int) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(rows, dim, sparse=True)
        self.head = torch.nn.Linear(dim, 1)


def written(manifest: CheckpointManifest) -> tuple[int, int, int]:
    """(exact-state, exact model-group, int8-variant) bytes this checkpoint wrote itself."""
    own = [f for f in manifest.files if f.ref_version is None]
    int8 = sum(f.size for f in own if f.name.startswith(("int8/", "rows/int8/")))
    model = sum(f.size for f in own if f.name.startswith(("tensors/model/", "rows/tensors/model/")))
    return sum(f.size for f in own) - int8, model, int8


def run(config: CheckpointerConfig, args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    model = EmbeddingModel(args.rows, args.dim)
    optimizer = torch.optim.SparseAdam(list(model.emb.parameters()), lr=1e-3)
    touched = max(1, int(args.rows * args.touched))
    bench_store, tmp = store(args.dir, fsync=False)
    adapter = TorchAdapter(model, optimizer)

    def interval() -> None:
        idx = torch.randperm(args.rows)[:touched]
        model.emb(idx).sum().backward()
        optimizer.step()
        optimizer.zero_grad()

    try:
        checkpointer = Checkpointer(bench_store, config)
        interval()
        first = written(checkpointer.save("emb", adapter, step=0).result())
        sizes = []
        completed = False
        limit = args.max_intervals if config.delta else args.intervals
        for step in range(1, limit + 1):
            interval()
            manifest = checkpointer.save("emb", adapter, step=step).result()
            if config.delta and manifest.kind == "full":
                completed = True  # the policy started a new chain: the cycle is whole
                break
            sizes.append(written(manifest))
        checkpointer.close()
    finally:
        bench_store.close()
        shutil.rmtree(tmp, ignore_errors=True)
    exact = sum(s[0] for s in sizes) / len(sizes)
    model_bytes = sum(s[1] for s in sizes) / len(sizes)
    int8 = sum(s[2] for s in sizes) / len(sizes)
    # Over one cycle of the policy: the full checkpoint and every delta built on it.
    k = len(sizes) if config.delta else 0
    return {
        "first_exact_bytes": first[0],
        "first_int8_bytes": first[2],
        "exact_bytes": exact,
        "model_bytes": model_bytes,
        "int8_bytes": int8,
        "deltas_per_full": k if config.delta else 0,
        "cycle_complete": completed if config.delta else True,
        "chain_over_base": sum(s[0] + s[2] for s in sizes) / (first[0] + first[2])
        if config.delta
        else 0.0,
        "amortized_exact_bytes": (first[0] + k * exact) / (k + 1),
        "amortized_int8_bytes": (first[2] + k * int8) / (k + 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--touched", type=float, default=0.01, help="fraction of rows per interval")
    parser.add_argument("--intervals", type=int, default=4, help="checkpoints of a full config")
    parser.add_argument(
        "--max-intervals",
        type=int,
        default=200,
        help="at most this many checkpoints of a differential config (its cycle's end)",
    )
    parser.add_argument("--dir", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    configs = {
        "full": CheckpointerConfig(async_saves=False, delta=False),
        "delta": CheckpointerConfig(async_saves=False),
        "full+int8": CheckpointerConfig(async_saves=False, delta=False, int8=True),
        "delta+int8": CheckpointerConfig(async_saves=False, int8=True),
    }
    results: dict[str, Any] = {"rows": args.rows, "dim": args.dim, "touched": args.touched}
    for name, config in configs.items():
        results[name] = run(config, args)
    base = results["full"]["exact_bytes"]
    model_base = results["full"]["model_bytes"]
    table = [
        f"bytes per checkpoint, embedding {args.rows:,} x {args.dim} + SparseAdam, "
        f"{args.touched:.0%} rows touched per interval; full configs: mean of "
        f"{args.intervals} intervals, differential: one whole cycle of the policy",
        f"{'config':<11} {'exact MB':>10} {'int8 MB':>9} {'full/exact':>11} "
        f"{'fp32 model/int8':>15} "
        f"{'deltas/full':>12} {'chain/base':>11} "
        f"{'amortized full/exact':>21}   (anchor: Check-N-Run 6-17x; target >= 17x)",
    ]
    for name in configs:
        r = results[name]
        r["ratio_exact"] = base / r["exact_bytes"]
        r["ratio_int8_vs_full_model"] = model_base / r["int8_bytes"] if r["int8_bytes"] else None
        r["ratio_amortized_exact"] = base / r["amortized_exact_bytes"]
        int8 = r["ratio_int8_vs_full_model"]
        int8_ratio = f"{int8:>14.1f}x" if int8 else f"{'-':>15}"
        table.append(
            f"{name:<11} {r['exact_bytes'] / 1e6:>10.2f} {r['int8_bytes'] / 1e6:>9.2f} "
            f"{r['ratio_exact']:>10.1f}x {int8_ratio} "
            f"{r['deltas_per_full']:>11}{'' if r['cycle_complete'] else '+'} "
            f"{r['chain_over_base']:>11.2f} {r['ratio_amortized_exact']:>20.1f}x"
        )
    table.append(
        "deltas/full: the policy's cadence ('+': the cycle had not ended after --max-intervals,"
        " amortized is then a lower bound of the cycle's); chain/base: bytes of the chain's"
        " deltas over its full checkpoint's (what a load of its newest reads beyond a full one)"
    )
    emit(results, args.json, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
