"""Training examples from river datasets, for in-memory runs, demos and benchmarks.

:func:`examples_from` turns any river dataset (``river.datasets.Phishing``,
``river.datasets.synth.ConceptDriftStream(...)``) into :class:`LocalExample`
objects that satisfy :class:`services.learning.adapters.Example`, with
deterministic example ids ``{prefix}-{index}``, each its own request (the
request id is the example id), so a model's holdout share applies to them
as to joined examples.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from river.datasets import synth

from services.learning.hashing import FeatureValue
from services.learning.labels import Label


@dataclass(frozen=True, slots=True)
class LocalExample:
    """A training example outside Kafka (same fields the trainer reads).

    ``request_id`` defaults to the example id (one example per request).
    """

    example_id: str
    model: str
    features: Mapping[str, FeatureValue]
    label: Label
    weight: float = 1.0
    request_id: str = ""

    def __post_init__(self) -> None:
        if not self.request_id:
            object.__setattr__(self, "request_id", self.example_id)


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


#: Streams :func:`drift_scenario` knows: two stationary ones and two with a
#: concept change at ``change_at``.
DRIFT_SCENARIOS = ("agrawal", "sea", "sea-0-to-3", "sea-inverted")


def drift_scenario(
    name: str, seed: int, *, n: int = 10_000, change_at: int = 5_000
) -> Iterator[tuple[dict[str, Any], Any]]:
    """``(x, y)`` pairs of a named drift scenario, for detector calibration.

    - ``agrawal``: river's ``synth.Agrawal(seed=seed)``, stationary;
    - ``sea``: ``synth.SEA(variant=0, seed=seed)``, stationary;
    - ``sea-0-to-3``: SEA variant 0, then from ``change_at`` variant 3 (the
      threshold moves from 8 to 9.5, so about 13% of the inputs change class);
    - ``sea-inverted``: SEA variant 0 whose labels flip from ``change_at``
      (the demo's concept change).
    """
    if name == "agrawal":
        yield from synth.Agrawal(seed=seed).take(n)
    elif name == "sea":
        yield from synth.SEA(variant=0, seed=seed).take(n)
    elif name == "sea-0-to-3":
        yield from synth.SEA(variant=0, seed=seed).take(change_at)
        yield from synth.SEA(variant=3, seed=seed + 1000).take(n - change_at)
    elif name == "sea-inverted":
        for i, (x, y) in enumerate(synth.SEA(variant=0, seed=seed).take(n)):
            yield x, (not y) if i >= change_at else y
    else:
        raise ValueError(f"unknown drift scenario {name!r}; known: {', '.join(DRIFT_SCENARIOS)}")
