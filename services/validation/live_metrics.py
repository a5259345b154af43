"""Live metrics: every served prediction scored against the feedback for its request.

The joiner copies the serving log's ``route``, ``prediction`` and ``scores``
into each :class:`~schemas.events.TrainingExample`, so the example says what
the version that served the request answered. :class:`LiveMetrics` compares
that answer with the label, per ``(model, model_version, route)``, on the
model's metrics (``ModelConfig.metric_names``), cumulatively and over the
model's sliding window (``ModelConfig.metrics.window``), with the river
metrics of :class:`services.learning.metrics.PrequentialMetrics`.

What an example counts as, in this order:

- a model not in the configuration: ``ignored`` (per model name), nothing else;
- a default label (``label_is_default``): ``defaults``, never scored (it is
  what the joiner assumed when no feedback came, not feedback);
- no ``prediction`` (an example from before the joiner copied it): ``unscored``;
- a label the model cannot learn, or a regression prediction that is not a
  number: ``invalid`` (the trainer dead-letters such a label);
- otherwise ``n``: scored on every metric it has the inputs for (``log_loss``
  and ``cross_entropy`` need ``scores``; ``without_scores`` counts those that
  had none).

Shadow predictions come as :class:`~schemas.events.ShadowScore` events
(:meth:`LiveMetrics.update_shadow`): the shadow version's answer against the
label of the request's example, scored the same way under route ``shadow``
of the shadow version (``ShadowScore.model_version``). The joiner emits none
for a default label, so a shadow route has no ``defaults``; every other
count reads as above. With ``with_live`` the same event's live answer is
scored too, under route ``live`` of ``live_version``: the live figures of
exactly the requests the shadow answered (the gateway's shadow stage keeps
such paired figures; the process-wide figures take the live route from the
training examples, so they leave it off). Repeats are the caller's to drop
(by ``event_id``).

Labels become targets as the trainer makes them (the model adapter's
``target()``: ``positive_label``, binary river classifiers learning bools,
``1.0`` -> ``1``; see :mod:`services.learning.labels`). Score names are the
model server's (booleans ``true`` / ``false``, else ``str`` of the class).

Figures live in the process (they start at zero when it starts: ``since_ms``
says when a version's figures began); :mod:`services.validation.live_store`
publishes them to Redis, :meth:`LiveMetrics.prometheus_text` exports them.
"""

from __future__ import annotations

import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from schemas.errors import SchemaError
from schemas.events import Scalar, ShadowScore, TrainingExample
from services.learning.adapters import Example, Score
from services.learning.config import ModelConfig
from services.learning.labels import Label, binary_target, class_label, regression_target
from services.learning.metrics import PrequentialMetrics

#: Route label of an example whose inference log named no route.
NO_ROUTE = "none"
#: Route label of shadow predictions (:meth:`LiveMetrics.update_shadow`).
SHADOW_ROUTE = "shadow"
#: Versions per model whose figures are kept in memory (least recently updated dropped first).
MAX_VERSIONS = 64
#: Metrics fed class probabilities (as in :mod:`services.learning.metrics`); the others
#: are fed the predicted class or value.
PROBA_METRICS = frozenset({"log_loss", "cross_entropy"})
_EPS = 1e-15


class LabelRule(Protocol):
    """How a model turns a label into its target (a ``ModelAdapter`` is one)."""

    @property
    def task(self) -> str: ...

    def target(self, example: Example) -> Label:
        """The label as the model learns it; SchemaError when it cannot be one."""
        ...


@dataclass(frozen=True)
class _TorchLabels:
    """``TorchAdapter.target`` without building the module (it depends on the config only)."""

    name: str
    task: str
    positive_label: Label | None

    def target(self, example: Example) -> Label:
        if self.task == "classification":
            return binary_target(example.label, positive_label=self.positive_label, model=self.name)
        return regression_target(example.label, model=self.name)


def label_rule(config: ModelConfig) -> LabelRule:
    """The trainer's label conversion for ``config``.

    River builds the model once (whether a classifier is binary is known only
    from the model); torch needs only the config. Raises ``ConfigError`` as
    :func:`services.learning.adapters.build_adapter` does.
    """
    if config.kind == "torch":
        assert config.task is not None  # noqa: S101 - ModelConfig guarantees it for torch; guards no input
        return _TorchLabels(config.name, config.task, config.positive_label)
    from services.learning.adapters import RiverAdapter

    return RiverAdapter(config)


@dataclass
class RouteFigures:
    """The figures of one ``(model, version, route)``."""

    metrics: PrequentialMetrics
    since_ms: int
    n: int = 0
    unscored: int = 0
    defaults: int = 0
    invalid: int = 0
    without_scores: int = 0
    first_ts: int | None = None
    last_ts: int | None = None
    #: The owner's update sequence number when this changed last (never goes back).
    changed: int = 0

    def seen(self, ts: int, seq: int) -> None:
        self.changed = seq
        self.first_ts = ts if self.first_ts is None else min(self.first_ts, ts)
        self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)

    def fed(self, name: str) -> int:
        """How many examples metric ``name`` was fed."""
        return self.n - self.without_scores if name in PROBA_METRICS else self.n

    def values(self) -> dict[str, float]:
        """``{name}`` (window) and ``{name}_total`` of each metric fed at least once."""
        return {
            key: value
            for key, value in self.metrics.values().items()
            if self.fed(key.removesuffix("_total")) > 0
        }

    def snapshot(self) -> dict[str, Any]:
        """JSON-able: counts, event-time span (``ts`` of the examples) and metric values."""
        return {
            "n": self.n,
            "unscored": self.unscored,
            "defaults": self.defaults,
            "invalid": self.invalid,
            "without_scores": self.without_scores,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "since_ms": self.since_ms,
            "window": self.metrics.window,
            "metrics": self.values(),
        }


@dataclass
class _ModelFigures:
    config: ModelConfig
    rule: LabelRule
    versions: OrderedDict[str, dict[str, RouteFigures]] = field(default_factory=OrderedDict)


class LiveMetrics:
    """Streaming metrics of every served version on live feedback.

    Parameters
    ----------
    models
        The model configuration by name; examples of other models are counted
        in :attr:`ignored` only.
    rules
        Label conversion per model (e.g. the adapters a process already has);
        default :func:`label_rule` of each config.
    max_versions
        Versions per model kept in memory; when one more arrives, the least
        recently updated one is dropped (its last published figures stay in
        Redis).
    clock
        Wall clock in seconds, for ``since_ms``.
    """

    def __init__(
        self,
        models: Mapping[str, ModelConfig],
        *,
        rules: Mapping[str, LabelRule] | None = None,
        max_versions: int = MAX_VERSIONS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_versions < 1:
            raise ValueError(f"max_versions must be at least 1, not {max_versions}")
        rules = rules or {}
        self._models = {
            name: _ModelFigures(config, rules.get(name) or label_rule(config))
            for name, config in models.items()
        }
        self._max_versions = max_versions
        self._clock = clock
        self._seq = 0
        #: Examples of models not in the configuration, by model name.
        self.ignored: Counter[str] = Counter()

    def update(self, example: TrainingExample) -> None:
        """Count ``example`` and score its prediction (see the module docstring); never raises
        on the example's content."""
        m = self._models.get(example.model)
        if m is None:
            self.ignored[example.model] += 1
            return
        figures = self._figures(m, example.model_version, example.route or NO_ROUTE)
        self._seq += 1
        figures.seen(example.ts, self._seq)
        if example.label_is_default:
            figures.defaults += 1
            return
        if example.prediction is None:
            figures.unscored += 1
            return
        self._scored(m, figures, example, example.prediction, example.scores)

    def update_shadow(self, score: ShadowScore, *, with_live: bool = False) -> None:
        """Score the shadow answer of ``score`` under route ``shadow`` (and, ``with_live``,
        its live answer under route ``live``); never raises on the event's content."""
        m = self._models.get(score.model)
        if m is None:
            self.ignored[score.model] += 1
            return
        answers: list[tuple[str, str, Scalar, Mapping[str, float] | None]] = [
            (score.model_version, SHADOW_ROUTE, score.prediction, score.scores)
        ]
        if with_live:
            answers.append((score.live_version, "live", score.live_prediction, score.live_scores))
        for version, route, prediction, scores in answers:
            figures = self._figures(m, version, route)
            self._seq += 1
            figures.seen(score.ts, self._seq)
            self._scored(m, figures, score, prediction, scores)

    def _scored(
        self,
        m: _ModelFigures,
        figures: RouteFigures,
        labelled: Labelled,
        prediction: Scalar,
        scores: Mapping[str, float] | None,
    ) -> None:
        try:
            score = _score(m.rule, labelled, prediction, scores)
        except SchemaError:
            figures.invalid += 1
            return
        figures.n += 1
        if score.proba is None and m.rule.task == "classification":
            figures.without_scores += 1
        figures.metrics.update(score)

    def _figures(self, m: _ModelFigures, version: str, route: str) -> RouteFigures:
        routes = m.versions.get(version)
        if routes is None:
            while len(m.versions) >= self._max_versions:
                m.versions.popitem(last=False)
            routes = m.versions[version] = {}
        else:
            m.versions.move_to_end(version)
        figures = routes.get(route)
        if figures is None:
            metrics = PrequentialMetrics(m.config.metric_names, m.config.metrics.window)
            figures = routes[route] = RouteFigures(metrics, int(self._clock() * 1000))
        return figures

    def changed(self, model: str, version: str) -> int:
        """A number that grows whenever ``version``'s figures change (0 when none are kept)."""
        m = self._models.get(model)
        routes = m.versions.get(version, {}) if m is not None else {}
        return max((f.changed for f in routes.values()), default=0)

    def snapshot(self) -> dict[str, dict[str, dict[str, Any]]]:
        """``{model: {version: {"routes": {route: figures}}}}``, JSON-able, every model listed.

        ``figures`` is :meth:`RouteFigures.snapshot`: ``metrics`` holds
        ``{name}`` (the window) and ``{name}_total`` (cumulative) of each
        metric that has a finite value.
        """
        return {
            model: {
                version: {"routes": {route: f.snapshot() for route, f in sorted(routes.items())}}
                for version, routes in m.versions.items()
            }
            for model, m in self._models.items()
        }

    def prometheus_text(self, prefix: str = "driftloop_live") -> str:
        """The figures in the Prometheus text exposition format.

        ``{prefix}_metric{model,version,route,metric,span}`` (gauge; ``span`` is
        ``window`` or ``total``), ``{prefix}_examples_total{model,version,route,
        outcome}`` (outcome ``scored``, ``unscored``, ``default``, ``invalid``),
        ``{prefix}_last_example_ts_ms{model,version,route}`` and
        ``{prefix}_ignored_total{model}``.
        """
        metric_rows: list[str] = []
        example_rows: list[str] = []
        ts_rows: list[str] = []
        for model, m in sorted(self._models.items()):
            for version, routes in sorted(m.versions.items()):
                for route, f in sorted(routes.items()):
                    base = {"model": model, "version": version, "route": route}
                    for key, value in sorted(f.values().items()):
                        name, span = (
                            (key.removesuffix("_total"), "total")
                            if key.endswith("_total")
                            else (key, "window")
                        )
                        labels = _labels(base | {"metric": name, "span": span})
                        metric_rows.append(f"{prefix}_metric{labels} {value!r}")
                    for outcome, count in (
                        ("scored", f.n),
                        ("unscored", f.unscored),
                        ("default", f.defaults),
                        ("invalid", f.invalid),
                    ):
                        labels = _labels(base | {"outcome": outcome})
                        example_rows.append(f"{prefix}_examples_total{labels} {count}")
                    if f.last_ts is not None:
                        ts_rows.append(f"{prefix}_last_example_ts_ms{_labels(base)} {f.last_ts}")
        ignored_rows = [
            f"{prefix}_ignored_total{_labels({'model': model})} {count}"
            for model, count in sorted(self.ignored.items())
        ]
        lines: list[str] = []
        for name, kind, rows in (
            ("metric", "gauge", metric_rows),
            ("examples_total", "counter", example_rows),
            ("last_example_ts_ms", "gauge", ts_rows),
            ("ignored_total", "counter", ignored_rows),
        ):
            if rows:
                lines.append(f"# TYPE {prefix}_{name} {kind}")
                lines.extend(rows)
        return "\n".join(lines) + "\n" if lines else ""


def score_served(rule: LabelRule, example: TrainingExample) -> Score:
    """The logged answer of ``example`` (its ``prediction``, which must be set) against its
    target, as the trainer scores it; SchemaError when the label or prediction cannot be one."""
    assert example.prediction is not None  # noqa: S101 - the caller checked; guards no input
    return _score(rule, example, example.prediction, example.scores)


class Labelled(Protocol):
    """What :func:`_score` reads of an event besides the answer: a TrainingExample
    and a ShadowScore both have it."""

    @property
    def model(self) -> str: ...
    @property
    def request_id(self) -> str: ...
    @property
    def example_id(self) -> str: ...
    @property
    def label(self) -> Label: ...


@dataclass(frozen=True)
class _Target:
    """A :class:`Labelled` as the :class:`~services.learning.adapters.Example` a
    label rule reads (the rules read ``label`` only; no features, unit weight)."""

    example_id: str
    request_id: str
    model: str
    label: Label
    features: Mapping[str, bool | int | float | str] = field(default_factory=dict)
    weight: float = 1.0


def _score(
    rule: LabelRule, labelled: Labelled, prediction: Scalar, scores: Mapping[str, float] | None
) -> Score:
    """A logged answer (``prediction``, ``scores``) against the target of ``labelled``'s
    label, as the trainer scores it."""
    target = _Target(labelled.example_id, labelled.request_id, labelled.model, labelled.label)
    y_true = rule.target(target)
    if rule.task != "classification":
        y_pred = regression_target(prediction, model=labelled.model)
        err = abs(y_pred - float(y_true))
        return Score(y_true, y_pred, None, err, err)
    y_class = class_label(prediction)
    proba = _proba(y_true, scores) if scores else None
    p_true = proba.get(y_true, 0.0) if proba else 0.0
    loss = -math.log(min(max(p_true, _EPS), 1.0 - _EPS))
    return Score(y_true, y_class, proba, loss, 0.0 if y_class == y_true else 1.0)


def _proba(y_true: Label, scores: Mapping[str, float]) -> dict[Label, float]:
    """The server's scores (named ``true`` / ``false`` or ``str(class)``) keyed by target.

    Binary targets get ``True`` / ``False`` keys (river's LogLoss reads
    ``proba[True]``); otherwise the score named like the true class is keyed
    by it (cross entropy reads ``proba[y_true]``), the others keep their names.
    """
    if isinstance(y_true, bool):
        named: dict[str, Label] = {"true": True, "false": False}
    else:
        named = {_score_name(y_true): y_true}
    return {named.get(key, key): p for key, p in scores.items()}


def _score_name(label: Label) -> str:
    """The model server's name for class ``label`` (``services.server.logs.label_key``)."""
    if isinstance(label, bool):
        return "true" if label else "false"
    return str(label)


def _labels(values: Mapping[str, str]) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{esc(v)}"' for k, v in values.items()) + "}"
