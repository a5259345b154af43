"""The real :class:`~services.validation.base.VersionEvaluator`: versions from the store.

:class:`StoreEvaluator` loads a version through a
:class:`~services.server.loader.VersionLoader` (in production a
:class:`~services.server.loader.StoreLoader`: read-only, the manifest's
signature and every file's size and sha256 verified, the state restored into
an inference-only adapter) and scores it on held-out examples. Its checks run
in this order; the first that fails ends the evaluation (``value`` None), and
``checks`` holds the checks that ran (one that did not run is absent, not
False):

1. ``loads`` (:data:`~services.validation.base.CHECK_LOADS`): the loader
   returned an adapter. Any failure (a ``CheckpointError`` for a missing,
   unsigned or corrupt version, whose message names the path and both
   sha256; a ``ConfigError``; anything else a restore raises) is False,
   with the failure in ``error``.
2. ``finite_weights``: :func:`services.validation.weights.nonfinite_weight`
   (torch: every parameter and buffer; river: every number reachable in the
   model; see that module for exactly what is walked).
3. ``finite_predictions``: the examples are predicted in batches of
   ``batch_size`` (:meth:`~services.learning.adapters.ModelAdapter.predict_many`);
   every numeric predicted value must be finite (a regressor's value, a
   numeric class); a classifier's every class score finite and in [0, 1]
   (within 1e-9, for rounding). The adapters report a non-finite output as a
   prediction without value (regressors) or without scores (classifiers):
   both fail. A ``PredictError`` fails the check with the example's index.
4. The metric over the predictions, as the trainer's prequential metrics
   compute it (:mod:`services.learning.metrics`): the river metric
   (``Accuracy``, ``LogLoss``, ``CrossEntropy``, ``MAE``, ``RMSE``) updated
   with each example's target and predicted class or value (accuracy, mae,
   rmse) or class probabilities (log_loss, cross_entropy), **unweighted**:
   example weights are not used, as the prequential metrics do not use them,
   so the gateway's figures compare with the trainer's. An example the metric
   cannot take (no predicted class yet, or no probabilities: a river
   classifier that has seen no label) is left out, as the prequential metrics
   leave it out. ``n`` counts the examples the metric took.

Each example's label becomes the target the trainer learns
(:meth:`~services.learning.adapters.ModelAdapter.target`: ``positive_label``,
binary and class labels as :mod:`services.learning.labels` says). An example
whose label or features the model refuses (``SchemaError`` from ``target`` or
``check_features``, or any other failure of those two) is **skipped**, not a
failure of the version: every version of a model is restored into the same
adapter configuration, so the same examples are refused for every version
compared, and one bad example in the holdout buffer must not block every
promotion while it stays there. The result (:class:`StoreEvaluation`) says
how many were skipped and why the first was, and the skip is logged (INFO);
an evaluation where nothing is left to score fails (``error`` says why).

Loaded versions are cached per model, the ``cache_size`` most recently used
(the live version is not reloaded for every candidate), with their weight
check; a failed load is not cached, so a tier that was away is tried again.
:meth:`StoreEvaluator.forget` drops versions no longer judged. One caller at
a time: the evaluator is not thread-safe.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from river import metrics as river_metrics

from schemas.errors import ConfigError, DriftloopError
from services.learning.adapters import ModelAdapter, Prediction
from services.learning.config import ModelConfig
from services.learning.hashing import FeatureValue
from services.learning.labels import Label
from services.server.loader import VersionLoader
from services.validation.base import (
    CHECK_FINITE_PREDICTIONS,
    CHECK_FINITE_WEIGHTS,
    CHECK_LOADS,
    Evaluation,
    HoldoutExample,
)
from services.validation.weights import nonfinite_weight

log = logging.getLogger(__name__)

#: Metric name -> (river metric class, fed class probabilities rather than the prediction).
METRICS: dict[str, tuple[Callable[[], Any], bool]] = {
    "accuracy": (river_metrics.Accuracy, False),
    "log_loss": (river_metrics.LogLoss, True),
    "cross_entropy": (river_metrics.CrossEntropy, True),
    "mae": (river_metrics.MAE, False),
    "rmse": (river_metrics.RMSE, False),
}
_SCORE_SLACK = 1e-9
_EPS = 1e-15  # probability clip of the per-example log loss, as river's


@dataclass(frozen=True)
class StoreEvaluation(Evaluation):
    """An :class:`Evaluation` that also says why examples were skipped.

    ``skipped`` examples (:attr:`Evaluation.skipped`) were left out before
    prediction (their label or features refused by the model's adapter);
    ``skipped_reason`` is why the first one was. They are not in ``n``.
    """

    skipped_reason: str | None = None


@dataclass(frozen=True, slots=True)
class _Labelled:
    """A held-out example as the adapters read one (``Example``)."""

    example_id: str
    model: str
    features: Mapping[str, FeatureValue]
    label: Label
    weight: float
    request_id: str


@dataclass(frozen=True, slots=True)
class _Loaded:
    adapter: ModelAdapter
    weight_problem: str | None


class _Failed(Exception):
    """One check failed: its name and what to say (internal to :class:`StoreEvaluator`)."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(message)
        self.check = check
        self.message = message


class StoreEvaluator:
    """Scores checkpoint versions on held-out examples (see the module docstring).

    Parameters
    ----------
    loader
        Builds a verified, ready-to-predict adapter for a version.
    models
        The configured models by name; a model not among them does not load.
    cache_size
        How many loaded versions to keep per model, the most recently used (0: none).
    batch_size
        Examples per ``predict_many`` call.
    """

    def __init__(
        self,
        loader: VersionLoader,
        models: Mapping[str, ModelConfig],
        *,
        cache_size: int = 4,
        batch_size: int = 256,
    ) -> None:
        if cache_size < 0 or batch_size < 1:
            raise ValueError("cache_size must be >= 0 and batch_size >= 1")
        self.loader = loader
        self.models = dict(models)
        self.cache_size = cache_size
        self.batch_size = batch_size
        self._cache: dict[str, OrderedDict[str, _Loaded]] = {}

    def cached(self, model: str) -> list[str]:
        """The versions of ``model`` held loaded, least recently used first."""
        return list(self._cache.get(model, ()))

    def forget(self, model: str, keep: Sequence[str] = ()) -> None:
        """Drop the loaded versions of ``model`` except those in ``keep``."""
        cache = self._cache.get(model)
        if cache is None:
            return
        for version in [v for v in cache if v not in keep]:
            del cache[version]

    def evaluate(
        self, model: str, version: str, examples: Sequence[HoldoutExample], metric: str
    ) -> StoreEvaluation:
        """Score ``version`` of ``model`` on ``examples`` by ``metric``, with its checks.

        Never raises for a bad version or a bad example (see the module docstring).

        Raises
        ------
        ConfigError
            ``metric`` is none of accuracy, log_loss, cross_entropy, mae, rmse
            (a caller's error: the model configuration admits no other).
        """
        if metric not in METRICS:
            raise ConfigError(f"unknown metric {metric!r}; known: {sorted(METRICS)}", model=model)
        checks: dict[str, bool] = {}
        where = f"model {model} version {version}"
        skipped, skipped_reason = 0, None
        try:
            loaded = self._load(model, version)
            checks[CHECK_LOADS] = True
            if loaded.weight_problem is not None:
                raise _Failed(CHECK_FINITE_WEIGHTS, loaded.weight_problem)
            checks[CHECK_FINITE_WEIGHTS] = True
            kept, targets, skipped, skipped_reason = _usable(loaded.adapter, model, examples)
            predictions = self._predict(loaded.adapter, kept)
            checks[CHECK_FINITE_PREDICTIONS] = True
        except _Failed as failed:
            checks[failed.check] = False
            failure = f"{where}: {failed.check} failed: {failed.message}"
            return StoreEvaluation(
                model, version, metric, None, 0, checks, failure, skipped, None, skipped_reason
            )
        if skipped:
            log.info(
                "%s: %d of %d held-out examples skipped, refused by the model (first: %s)",
                where,
                skipped,
                len(examples),
                skipped_reason,
            )
        indices = [index for index, _ in kept]
        value, n, losses, problem = _score(metric, indices, targets, predictions)
        if problem is None and value is None:
            problem = f"no example scored ({len(examples)} held out, {skipped} skipped)"
            if skipped_reason is not None:
                problem += f"; first skipped: {skipped_reason}"
        error = None if problem is None else f"{where}: {problem}"
        return StoreEvaluation(
            model,
            version,
            metric,
            value,
            n,
            checks,
            error,
            skipped,
            losses if value is not None else None,
            skipped_reason,
        )

    def _load(self, model: str, version: str) -> _Loaded:
        cache = self._cache.setdefault(model, OrderedDict())
        hit = cache.get(version)
        if hit is not None:
            cache.move_to_end(version)
            return hit
        if model not in self.models:
            raise _Failed(CHECK_LOADS, "the model is not configured")
        try:
            adapter = self.loader.load(model, version)
        # Any failure to load (verification, restore, configuration) is a failed check.
        except Exception as exc:
            raise _Failed(CHECK_LOADS, f"{type(exc).__name__}: {exc}") from exc
        try:
            problem = nonfinite_weight(adapter)
        except Exception as exc:  # noqa: BLE001 - a model whose state cannot be walked is not shown finite
            problem = f"the weights could not be checked: {type(exc).__name__}: {exc}"
        loaded = _Loaded(adapter, problem)
        if self.cache_size:
            cache[version] = loaded
            while len(cache) > self.cache_size:
                cache.popitem(last=False)
        return loaded

    def _predict(
        self, adapter: ModelAdapter, kept: Sequence[tuple[int, HoldoutExample]]
    ) -> list[Prediction]:
        """Predictions of the ``(index, example)`` pairs; _Failed on a failure or a bad value."""
        out: list[Prediction] = []
        for start in range(0, len(kept), self.batch_size):
            chunk = kept[start : start + self.batch_size]
            first, last = chunk[0][0], chunk[-1][0]
            try:
                predictions = adapter.predict_many([e.features for _, e in chunk])
            except Exception as exc:  # model code failing on a valid input fails the check
                index = exc.context.get("index") if isinstance(exc, DriftloopError) else None
                at = ""
                if isinstance(index, int) and 0 <= index < len(chunk):
                    at = f", at its index {index} (example {chunk[index][0]})"
                raise _Failed(
                    CHECK_FINITE_PREDICTIONS,
                    f"predict_many failed on the batch of examples {first}..{last}{at}: "
                    f"{type(exc).__name__}: {exc}",
                ) from exc
            if len(predictions) != len(chunk):
                raise _Failed(
                    CHECK_FINITE_PREDICTIONS,
                    f"predict_many returned {len(predictions)} predictions for {len(chunk)}"
                    f" examples ({first}..{last})",
                )
            for (index, _), prediction in zip(chunk, predictions, strict=True):
                problem = _prediction_problem(adapter.task, prediction)
                if problem is not None:
                    raise _Failed(CHECK_FINITE_PREDICTIONS, f"example {index}: {problem}")
            out.extend(predictions)
        return out


def _usable(
    adapter: ModelAdapter, model: str, examples: Sequence[HoldoutExample]
) -> tuple[list[tuple[int, HoldoutExample]], list[Label], int, str | None]:
    """The examples the model takes, with their index and target; how many it refused, and why
    the first was."""
    kept: list[tuple[int, HoldoutExample]] = []
    targets: list[Label] = []
    skipped, reason = 0, None
    for index, example in enumerate(examples):
        labelled = _Labelled(
            example.request_id,
            model,
            example.features,
            example.label,
            example.weight,
            example.request_id,
        )
        try:
            target = adapter.target(labelled)
            adapter.check_features(example.features)
        except Exception as exc:  # noqa: BLE001 - SchemaError, or whatever a label of a type no schema admits makes the conversion raise: the example is refused
            skipped += 1
            if reason is None:
                reason = f"example {index} (request {example.request_id}): {exc}"
            continue
        kept.append((index, example))
        targets.append(target)
    return kept, targets, skipped, reason


def _prediction_problem(task: str, prediction: Prediction) -> str | None:
    """What is wrong with one prediction's figures, or None."""
    value, scores = prediction.value, prediction.scores
    if isinstance(value, int | float) and not math.isfinite(value):
        return f"predicted value {value}"
    if task != "classification":
        return None if value is not None else "no predicted value (the output is not finite)"
    if scores is None:
        return "no class scores (a probability is not finite)"
    for label, score in scores.items():
        finite = isinstance(score, int | float) and math.isfinite(score)
        if not finite or not -_SCORE_SLACK <= score <= 1.0 + _SCORE_SLACK:
            return f"score {score!r} for class {label!r} is not a probability"
    return None


def _score(
    metric: str,
    indices: Sequence[int],
    targets: Sequence[Label],
    predictions: Sequence[Prediction],
) -> tuple[float | None, int, dict[int, float], str | None]:
    """``metric`` over the predictions it can take (None: none), how many it took, each
    one's own loss by its example index (:attr:`Evaluation.losses`), and what went wrong
    (the metric refused a prediction, or its value is not finite)."""
    factory, uses_scores = METRICS[metric]
    measure = factory()
    losses: dict[int, float] = {}
    for index, y_true, prediction in zip(indices, targets, predictions, strict=True):
        y_pred: Any = prediction.scores if uses_scores else prediction.value
        if y_pred is None or y_pred == {}:
            continue
        try:
            measure.update(y_true, y_pred)
        except Exception as exc:  # noqa: BLE001 - a metric that cannot take this model's output makes no value, reported
            why = f"{type(exc).__name__}: {exc}"
            problem = f"{metric} cannot take prediction {y_pred!r} of {y_true!r}: {why}"
            return None, len(losses), {}, problem
        losses[index] = example_loss(metric, y_true, y_pred)
    n = len(losses)
    if not n:
        return None, 0, {}, None
    value = float(measure.get())
    if not math.isfinite(value):
        return None, n, {}, f"{metric} is {value} on {n} examples"
    return value, n, losses, None


def example_loss(metric: str, y_true: Any, y_pred: Any) -> float:
    """One example's own loss under ``metric`` (larger is worse), fed what the metric is fed:
    the predicted class or value, or the class probabilities (log_loss, cross_entropy).

    The figure whose mean (accuracy: one minus it; rmse: the square root of
    it) is the metric, so two versions can be compared request by request.
    """
    if metric == "accuracy":
        return 0.0 if y_pred == y_true else 1.0
    if metric in ("mae", "rmse"):
        err = abs(float(y_pred) - float(y_true))
        return err if metric == "mae" else err * err
    p = y_pred.get(y_true, 0.0) if isinstance(y_pred, Mapping) else 0.0
    p = float(p) if isinstance(p, int | float) and math.isfinite(p) else 0.0
    return -math.log(min(max(p, _EPS), 1.0 - _EPS))
