"""Live metrics through the real Redis: the store writes, ``driftloop status`` shows them."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest
import redis
from typer.testing import CliRunner

from services.cli import app
from services.learning.config import parse_config
from services.validation.live_metrics import LiveMetrics
from services.validation.live_store import LiveMetricsStore, read_live_metrics
from tests.unit.test_live_metrics import example

if TYPE_CHECKING:
    from tests.integration.conftest import Sandbox

M = "price"


def _live() -> LiveMetrics:
    config = parse_config(
        {
            "model": [
                {
                    "name": M,
                    "kind": "river",
                    "factory": {"path": "river.linear_model.LinearRegression"},
                    "metrics": {"names": ["mae", "rmse"], "window": 2},
                }
            ]
        }
    )
    return LiveMetrics({M: config.model(M)})


def test_published_figures_are_read_back_and_shown_by_status(
    sandbox: Sandbox, redis_client: redis.Redis[str]
) -> None:
    live = _live()
    store = LiveMetricsStore(live, redis_client, key_prefix=sandbox.redis.key_prefix)
    for y, y_pred in ((1.0, 2.0), (1.0, 4.0), (2.0, 2.0)):
        live.update(example(M, "price-000001", y, y_pred))
    live.update(example(M, "price-000002", 1.0, 1.5, route="canary"))
    live.update(example(M, "price-000002", 1.0, None, route="canary"))
    assert store.publish(1_700_000_000.0) == 2

    key = sandbox.redis.key(M, "metrics")
    assert sorted(redis_client.hkeys(key)) == ["price-000001", "price-000002"]
    read = read_live_metrics(redis_client, sandbox.redis.key_prefix, M)
    assert read["price-000001"]["updated_ms"] == 1_700_000_000_000
    assert read["price-000001"]["routes"]["live"]["metrics"]["mae_total"] == pytest.approx(4 / 3)
    assert read["price-000001"]["routes"]["live"]["metrics"]["mae"] == 1.5  # window of 2

    env = sandbox.stack.env() | {
        "DRIFTLOOP_TOPIC_PREFIX": sandbox.topics.prefix,
        "DRIFTLOOP_REDIS_KEY_PREFIX": sandbox.redis.key_prefix,
    }
    runner = CliRunner()
    result = runner.invoke(app, ["status", M, "--recent", "0", "--json"], env=env)
    assert result.exit_code == 0, result.output
    (model,) = json.loads(result.stdout)["models"]
    shown: dict[str, Any] = model["live_metrics"]
    assert shown == read
    canary = shown["price-000002"]["routes"]["canary"]
    assert (canary["n"], canary["unscored"]) == (1, 1)
    assert set(canary["metrics"]) == {"mae", "mae_total", "rmse", "rmse_total"}

    text = runner.invoke(app, ["status", M, "--recent", "0"], env=env)
    assert text.exit_code == 0, text.output
    assert "live metrics (window / total)" in text.stdout
    assert "mae=1.5000/1.3333" in text.stdout
