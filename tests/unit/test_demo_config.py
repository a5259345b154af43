"""The demo applies its checkpoint interval and its gateway settings to whichever
shipped example it runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.demo.runner import DemoOptions, _demo_model_config
from services.learning.config import load_config


@pytest.mark.parametrize("example", ["river_logreg", "torch_fm"])
def test_the_count_interval_is_applied_to_every_shipped_example(
    example: str, tmp_path: Path
) -> None:
    path, name = _demo_model_config(
        DemoOptions(model_config=example, checkpoint_every=300), tmp_path
    )
    model = load_config(path).model(name)
    assert model.triggers.every_n == 300
    assert model.triggers.adaptive is None or model.triggers.adaptive.min_every_n <= 150
    # the gateway promotes on a small holdout sample and the guard watches
    options = DemoOptions()
    assert model.promotion.mode == options.policy == "canary"
    assert model.promotion.canary_percent == options.canary_percent
    assert model.promotion.canary_examples == options.judge_examples
    assert model.promotion.min_examples == model.guard.min_examples == options.judge_examples
    assert model.promotion.holdout_size == 2 * options.judge_examples
    assert model.promotion.holdout_percent == options.holdout_percent
    assert model.guard.enabled


@pytest.mark.parametrize("example", ["river_logreg", "torch_fm"])
def test_the_auto_policy_is_applied_too(example: str, tmp_path: Path) -> None:
    path, name = _demo_model_config(DemoOptions(model_config=example, policy="auto"), tmp_path)
    assert load_config(path).model(name).promotion.mode == "auto"


def test_the_bootstrap_covers_the_first_count_checkpoint_or_is_refused() -> None:
    from dataclasses import replace

    from schemas.errors import ConfigError
    from services.demo.runner import warmup_requests
    from services.demo.traffic import TrafficConfig

    options = DemoOptions(checkpoint_every=400, traffic=TrafficConfig(requests=2400))
    # ~95% of requests are joined: enough examples for 400, at most half the traffic.
    assert 400 / 0.95 < warmup_requests(options) <= 1200
    with pytest.raises(ConfigError, match="too few requests"):
        warmup_requests(replace(options, traffic=TrafficConfig(requests=1000)))


def test_late_feedback_that_the_joiner_would_not_call_late_is_refused() -> None:
    from schemas.errors import ConfigError
    from services.demo.runner import _check_timing
    from services.demo.traffic import TrafficConfig

    _check_timing(DemoOptions())
    with pytest.raises(ConfigError, match="late feedback"):
        _check_timing(DemoOptions(traffic=TrafficConfig(late_after_ms=5_000)))
    with pytest.raises(ConfigError, match="late feedback"):
        _check_timing(DemoOptions(traffic=TrafficConfig(late_after_ms=60_000)))
