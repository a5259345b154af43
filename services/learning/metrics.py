"""Prequential (test-then-train) metrics, cumulative and over a sliding window.

Each example is scored before the model learns from it; the score updates a
river metric twice: a cumulative one (equal, on the same stream, to
``river.evaluate.progressive_val_score`` with the same metric) and a
``river.utils.Rolling`` one over the last ``window`` examples.

=================  =====================  ========================================
name               river metric           fed
=================  =====================  ========================================
``accuracy``       ``metrics.Accuracy``   predicted class (skipped while None)
``log_loss``       ``metrics.LogLoss``    class probabilities; binary (bool) labels
``cross_entropy``  ``metrics.CrossEntropy``  class probabilities; any labels
``mae``            ``metrics.MAE``        predicted value
``rmse``           ``metrics.RMSE``       predicted value
=================  =====================  ========================================

:meth:`PrequentialMetrics.values` reports ``{name}`` (the window) and
``{name}_total`` (cumulative).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from river import metrics, utils

from services.learning.adapters import Score

_METRICS: dict[str, Any] = {
    "accuracy": metrics.Accuracy,
    "log_loss": metrics.LogLoss,
    "cross_entropy": metrics.CrossEntropy,
    "mae": metrics.MAE,
    "rmse": metrics.RMSE,
}
_USES_PROBA = frozenset({"log_loss", "cross_entropy"})


def bigger_is_better(name: str) -> bool:
    """Whether a larger value of metric ``name`` (or ``{name}_total``) is better."""
    return bool(_METRICS[name.removesuffix("_total")]().bigger_is_better)


class PrequentialMetrics:
    """River metrics updated from :class:`~services.learning.adapters.Score` objects.

    Parameters
    ----------
    names
        Metric names (see the module table).
    window
        Length of the sliding window, in examples.
    """

    def __init__(self, names: Sequence[str], window: int) -> None:
        unknown = [n for n in names if n not in _METRICS]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; known: {sorted(_METRICS)}")
        self.names = tuple(names)
        self.window = window
        self.total: dict[str, Any] = {n: _METRICS[n]() for n in self.names}
        self.rolling: dict[str, Any] = {
            n: utils.Rolling(_METRICS[n], window_size=window) for n in self.names
        }
        self.count = 0

    def update(self, score: Score) -> None:
        """Account for one example scored before learning."""
        self.count += 1
        for name in self.names:
            y_pred: Any = score.proba if name in _USES_PROBA else score.y_pred
            if y_pred is None or y_pred == {}:
                continue
            self.total[name].update(score.y_true, y_pred)
            self.rolling[name].update(score.y_true, y_pred)

    def values(self) -> dict[str, float]:
        """``{name: window value, name_total: cumulative value}``; NaN-free."""
        out: dict[str, float] = {}
        for name in self.names:
            for key, metric in ((name, self.rolling[name]), (f"{name}_total", self.total[name])):
                value = float(metric.get())
                if math.isfinite(value):
                    out[key] = value
        return out

    def objects(self) -> dict[str, Any]:
        """The river metric objects, for the checkpoint (river pickles)."""
        return {"total": self.total, "rolling": self.rolling, "count": self.count}

    def restore(self, objects: dict[str, Any]) -> None:
        """Take back the state of :meth:`objects` from a checkpoint."""
        self.total = dict(objects["total"])
        self.rolling = dict(objects["rolling"])
        self.count = int(objects["count"])
