"""The serving benchmarks' half-swap detector (benchmarks._serving.check_response) and
resized torch example."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks._serving import Example, check_response


def body(top: str, *served: tuple[str, str]) -> dict[str, Any]:
    return {
        "model_version": top,
        "predictions": [{"model_version": v, "route": route} for v, route in served],
    }


def test_a_batch_served_by_one_version_passes() -> None:
    assert check_response(body("a", ("a", "live"), ("a", "live")), frozenset({"a", "b"})) is None


def test_a_batch_whose_live_predictions_name_two_versions_is_half_swapped() -> None:
    wrong = check_response(body("a", ("a", "live"), ("b", "live")), frozenset({"a", "b"}))
    assert wrong is not None
    assert "['a', 'b']" in wrong


def test_live_predictions_must_name_the_top_level_version() -> None:
    assert check_response(body("a", ("b", "live")), frozenset()) is not None


def test_a_version_outside_the_benchmark_is_flagged() -> None:
    assert check_response(body("c", ("c", "live")), frozenset({"a", "b"})) is not None


def test_canary_predictions_may_name_another_version() -> None:
    assert check_response(body("a", ("a", "live"), ("b", "canary")), frozenset({"a", "b"})) is None


def test_a_resized_torch_example_has_the_asked_rows_and_factors(tmp_path: Path) -> None:
    example = Example.torch_sized(tmp_path, 4096, 3)
    config = example.learning.model(example.model)
    assert config.encoding is not None
    assert config.encoding.buckets == 4096
    assert config.factory.params["factors"] == 3
    params, nbytes = example.size()
    assert params == 4096 * (3 + 1) + 1  # linear rows + factor rows + bias
    assert nbytes == params * 4  # float32
    assert example.path.parent == tmp_path  # the shipped file is left as it is
