"""Load time of a checkpoint, against ``torch.load`` of the same state.

Two states, each saved both ways in the same run:

- an MLP of about ``--size`` (10) million parameters with Adam state, one full
  checkpoint: :meth:`Checkpointer.load` (every file's sha256 verified; the
  state digest is composed from those hashes, no second pass) vs ``torch.load``
  of a ``torch.save`` file of the same state dicts (no verification), and
  ``Checkpointer.load`` with ``verify_on_load`` off (file hashes are still
  checked by the store);
- an embedding model (``--rows`` x 64, SparseAdam) at the end of a delta
  chain of ``--chain`` checkpoints (1% rows touched between): the load walks
  back to the base and applies rows, and hashes the rebuilt tensors to check
  the state digest.

Each figure is the best of ``--rounds`` loads (files in the page cache).

Run: ``python -m benchmarks.checkpoint_load [--size 10] [--chain 8] [--json]``.
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks._common import emit, mlp, n_params, store, train_step
from services.checkpoints.checkpointer import Checkpointer, CheckpointerConfig
from services.checkpoints.state.torch_state import TorchAdapter


def best(fn: Callable[[], Any], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=float, default=10.0, help="MLP size, millions of params")
    parser.add_argument("--rows", type=int, default=200_000, help="embedding rows (chain case)")
    parser.add_argument("--chain", type=int, default=8, help="deltas after the full checkpoint")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    results: dict[str, Any] = {}
    bench_store, tmp = store(args.dir, fsync=False, keep_latest=args.chain + 2)
    try:
        torch.manual_seed(0)
        module = mlp(args.size)
        optimizer = torch.optim.Adam(module.parameters())
        train_step(module, optimizer)
        quiet = Checkpointer(bench_store, CheckpointerConfig(async_saves=False, delta=False))
        quiet.save("mlp", TorchAdapter(module, optimizer), step=1)
        torch.save(
            {"model": module.state_dict(), "optimizer": optimizer.state_dict()}, tmp / "t.pt"
        )
        unverified = Checkpointer(bench_store, CheckpointerConfig(verify_on_load=False))
        results["mlp"] = {
            "params": n_params(module),
            "torch.load_s": best(lambda: torch.load(tmp / "t.pt"), args.rounds),
            "driftloop_s": best(lambda: quiet.load("mlp"), args.rounds),
            "driftloop_no_digest_s": best(lambda: unverified.load("mlp"), args.rounds),
        }
        unverified.close()

        emb = torch.nn.Embedding(args.rows, 64, sparse=True)
        sparse = torch.optim.SparseAdam(list(emb.parameters()))
        chained = Checkpointer(bench_store, CheckpointerConfig(async_saves=False))
        for step in range(args.chain + 1):
            emb(torch.randperm(args.rows)[: args.rows // 100]).sum().backward()
            sparse.step()
            sparse.zero_grad()
            chained.save("emb", TorchAdapter(emb, sparse), step=step)
        kinds = [m.kind for m in bench_store.manifests("emb")]
        torch.save({"model": emb.state_dict(), "optimizer": sparse.state_dict()}, tmp / "e.pt")
        results["embedding_chain"] = {
            "rows": args.rows,
            "chain": kinds.count("delta"),
            "torch.load_s": best(lambda: torch.load(tmp / "e.pt"), args.rounds),
            "driftloop_s": best(lambda: chained.load("emb"), args.rounds),
        }
    finally:
        bench_store.close()
        shutil.rmtree(tmp, ignore_errors=True)
    table = [f"load time, best of {args.rounds} (page cache warm)"]
    for name, r in results.items():
        base = r["torch.load_s"]
        for key, value in list(r.items()):
            if key.endswith("_s"):
                r[key.replace("_s", "_vs_torch_load")] = value / base
                table.append(
                    f"{name:<16} {key[:-2]:<20} {value * 1e3:>9.1f} ms "
                    f"{value / base:>6.2f}x torch.load"
                )
    emit(results, args.json, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
