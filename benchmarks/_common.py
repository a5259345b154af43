"""Helpers shared by the checkpoint benchmarks: models of a given size, stores, printing."""

from __future__ import annotations

import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.checkpoints.config import StoreConfig
from services.checkpoints.opener import open_store
from services.checkpoints.signing import ensure_default_key
from services.checkpoints.store import CheckpointStore


def mlp(params_millions: float, *, width_in: int = 256) -> torch.nn.Module:
    """An MLP of about ``params_millions`` million parameters (3 square hidden layers)."""
    target = params_millions * 1e6
    b = width_in + 5  # 3 h^2 + (width_in + 5) h + 1 parameters
    hidden = max(16, int((-b + (b * b + 12 * target) ** 0.5) / 6))
    layers: list[torch.nn.Module] = [torch.nn.Linear(width_in, hidden), torch.nn.ReLU()]
    for _ in range(3):
        layers += [torch.nn.Linear(hidden, hidden), torch.nn.ReLU()]
    layers.append(torch.nn.Linear(hidden, 1))
    return torch.nn.Sequential(*layers)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def train_step(module: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: int = 32) -> None:
    first = next(module.parameters())
    x = torch.randn(batch, first.shape[1])
    loss = module(x).pow(2).mean()
    optimizer.zero_grad(set_to_none=False)
    loss.backward()
    optimizer.step()


def store_config(root: Path, **settings: Any) -> StoreConfig:
    """Store settings rooted at ``root``, signing with the embedded default key
    (``DRIFTLOOP_STORE_SIGNING_KEY[_FILE]`` when set, else one made in ``key_dir``)."""
    return ensure_default_key(StoreConfig(root=root, **settings))


def signing_env(root: Path) -> dict[str, str]:
    """Environment that gives a worker subprocess writing under ``root`` the same key."""
    config = store_config(root)
    if config.signing_key is None and config.signing_key_file is not None:
        return {"DRIFTLOOP_STORE_SIGNING_KEY_FILE": str(config.signing_key_file)}
    return {}  # DRIFTLOOP_STORE_SIGNING_KEY is inherited


def store(root: str | None, **settings: Any) -> tuple[CheckpointStore, Path]:
    """A real checkpoint store in a fresh temporary directory (under ``root`` if given)."""
    path = Path(tempfile.mkdtemp(prefix="driftloop-bench-", dir=root))
    config = store_config(path / "store", **{"keep_latest": 2, **settings})
    # No model configuration names these synthetic models: the store's retention applies.
    return open_store(config, None), path


def pct(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, linear interpolation."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    if q >= 1:
        return ordered[-1]
    return statistics.quantiles(ordered, n=100, method="inclusive")[round(q * 100) - 1]


def emit(results: dict[str, Any], as_json: bool, table: list[str]) -> None:
    """Print ``results`` as JSON, or the human ``table`` lines."""
    if as_json:
        print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
    else:
        print("\n".join(table))
