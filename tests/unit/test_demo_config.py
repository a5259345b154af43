"""The demo applies its checkpoint interval to whichever shipped example it runs."""

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
