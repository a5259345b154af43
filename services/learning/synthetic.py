"""Training examples from river datasets, for in-memory runs, demos and benchmarks.

:func:`examples_from` turns any river dataset (``river.datasets.Phishing``,
``river.datasets.synth.ConceptDriftStream(...)``) into :class:`LocalExample`
objects that satisfy :class:`services.learning.adapters.Example`, with
deterministic example ids ``{prefix}-{index}``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from services.learning.hashing import FeatureValue
from services.learning.labels import Label


@dataclass(frozen=True, slots=True)
class LocalExample:
    """A training example outside Kafka (same fields the trainer reads)."""

    example_id: str
    model: str
    features: Mapping[str, FeatureValue]
    label: Label
    weight: float = 1.0


def _scalar(value: Any) -> FeatureValue:
    if isinstance(value, bool | int | float | str):
        return value
    return float(value)


def examples_from(
    dataset: Iterable[tuple[dict[str, Any], Any]],
    model: str,
    *,
    limit: int | None = None,
    prefix: str = "ex",
) -> Iterator[LocalExample]:
    """``LocalExample`` s from ``(x, y)`` pairs, at most ``limit`` of them."""
    pairs = itertools.islice(dataset, limit) if limit is not None else iter(dataset)
    for i, (x, y) in enumerate(pairs):
        features = {str(k): _scalar(v) for k, v in x.items()}
        yield LocalExample(f"{prefix}-{i}", model, features, _scalar(y))
