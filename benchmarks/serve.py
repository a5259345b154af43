"""What the model server adds to a prediction, and what a resident version saves a rollback.

For the shipped river and torch examples (checkpoints written by the trainer
into a temporary store, loaded back verified through the server's loader):

- ``direct``: instances/s of ``predict_many`` on batches of ``--batch``, on a
  worker thread as the server runs it (the baseline; torch on the main thread
  of a busy two-core machine measured several times slower: its intra-op
  threads contend);
- ``served``: instances/s of ``POST /v1/models/{model}:predict`` with the same
  batches, in process (FastAPI TestClient: validation, routing, response and
  InferenceLog building; an in-memory publisher, no network); ``ratio`` is
  served over direct;
- ``load`` vs ``switch``: seconds to apply a pointer change naming a version
  that must be loaded (verified read, restore, warm-up) against one naming a
  resident version (a rollback within the K resident versions).

Each figure is the best of ``--rounds`` rounds (shared, noisy machines).
Run: ``python -m benchmarks.serve [--json] [--batch N] [--calls N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
from river import datasets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastapi.testclient import TestClient

from services.checkpoints.checkpointer import Checkpointer, CheckpointerConfig
from services.checkpoints.config import StoreConfig
from services.checkpoints.signing import ensure_default_key
from services.checkpoints.store import CheckpointStore
from services.learning.config import LearningConfig, example_path, load_config
from services.learning.store_sink import CheckpointerSink
from services.learning.synthetic import examples_from
from services.learning.trainer import OnlineTrainer
from services.pointer.base import PointerState
from services.publish.memory import InMemoryPublisher
from services.server.app import ServerContext, create_app
from services.server.config import ServerConfig
from services.server.loader import StoreLoader
from services.server.metrics import ServerMetrics
from services.server.registry import ModelRegistry


def _best(rounds: int, fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(rounds))


def _store(root: Path, learning: LearningConfig, model: str) -> tuple[StoreConfig, list[str]]:
    config = ensure_default_key(StoreConfig(root=root, fsync=False))
    sink = CheckpointerSink(
        Checkpointer(CheckpointStore(config), CheckpointerConfig(async_saves=False))
    )
    trainer = OnlineTrainer(learning.model(model), sink)
    versions = []
    for i, ex in enumerate(examples_from(datasets.Phishing(), model, limit=400)):
        trainer.process(ex, topic="t", partition=0, offset=i)
        if i in (199, 399):
            versions.append(trainer.checkpoint("manual").version)
    return config, versions


def measure(example: str, batch: int, calls: int, rounds: int) -> dict[str, Any]:
    learning = load_config(example_path(example))
    model = learning.models[0].name
    with tempfile.TemporaryDirectory() as tmp:
        store, (v1, v2) = _store(Path(tmp) / "store", learning, model)
        loader = StoreLoader(store, learning)
        registry = ModelRegistry(model, loader, resident=4)
        registry.apply(PointerState(model=model, epoch=1, live=v1))
        publisher = InMemoryPublisher()
        ctx = ServerContext(
            config=ServerConfig(server_id="bench"),
            registries={model: registry},
            publisher=publisher,
            metrics=ServerMetrics(),
        )
        client = TestClient(create_app(ctx))
        feats = [dict(e.features) for e in examples_from(datasets.Phishing(), model, limit=batch)]
        body = orjson.dumps({"instances": [{"features": f} for f in feats]})
        adapter = registry.serving.live.adapter  # type: ignore[union-attr]

        def direct() -> float:
            start = time.perf_counter()
            for _ in range(calls):
                adapter.predict_many(feats)
            return time.perf_counter() - start

        def served() -> float:
            start = time.perf_counter()
            for _ in range(calls):
                r = client.post(
                    f"/v1/models/{model}:predict",
                    content=body,
                    headers={"content-type": "application/json"},
                )
                if r.status_code != 200:
                    raise RuntimeError(f"predict failed: {r.status_code} {r.text[:200]}")
            elapsed = time.perf_counter() - start
            publisher.flush()
            publisher.sent.clear()
            return elapsed

        epoch = [1]

        def change(version: str) -> float:
            epoch[0] += 1
            start = time.perf_counter()
            registry.apply(PointerState(model=model, epoch=epoch[0], live=version))
            return time.perf_counter() - start

        def load() -> float:
            fresh = ModelRegistry(model, loader, resident=4)
            fresh.apply(PointerState(model=model, epoch=1, live=v1))
            start = time.perf_counter()
            fresh.apply(PointerState(model=model, epoch=2, live=v2))
            return time.perf_counter() - start

        change(v2)  # both resident from here on
        with ThreadPoolExecutor(1) as pool:  # interleaved rounds: same conditions
            pairs = [(pool.submit(direct).result(), served()) for _ in range(rounds)]
        d = min(p[0] for p in pairs)
        s = min(p[1] for p in pairs)
        switch = _best(rounds, lambda: change(v1) + change(v2)) / 2
        loaded = _best(rounds, load)
    n = calls * batch
    return {
        "example": example,
        "batch": batch,
        "direct_per_s": n / d,
        "served_per_s": n / s,
        "ratio": (n / s) / (n / d),
        "load_s": loaded,
        "switch_s": switch,
        "switch_over_load": switch / loaded,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = [measure(e, args.batch, args.calls, args.rounds) for e in ("river_logreg", "torch_fm")]
    if args.json:
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    head = f"{'example':14} {'direct/s':>10} {'served/s':>10} {'ratio':>6}"
    print(f"{head} {'load s':>8} {'switch s':>9}")
    for r in rows:
        print(
            f"{r['example']:14} {r['direct_per_s']:10.0f} {r['served_per_s']:10.0f}"
            f" {r['ratio']:6.2f} {r['load_s']:8.4f} {r['switch_s']:9.6f}"
            f"  (switch/load {r['switch_over_load']:.4f})"
        )


if __name__ == "__main__":
    main()
