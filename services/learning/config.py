"""Model configuration: one TOML file declares every model driftloop trains.

Each ``[[model]]`` table becomes a frozen :class:`ModelConfig`; the file as a
whole is a :class:`LearningConfig`. Validation refuses, naming the model and
the field, whatever would fail later in the trainer:

- every factory path (nested ones included) must resolve, under the rules of
  :mod:`services.learning.factory`, to an admitted class or a registered
  builder; the module of the path is imported, nothing is built. There is no
  per-model allow-list: a table with the old ``allowed_prefixes`` key is refused;
- drift detector parameters must lie in the bounds of
  :mod:`services.learning.detector_params`;
- numbers are finite, intervals at least :data:`MIN_INTERVAL_S`, and a model
  name is one the checkpoint store accepts (``schemas.manifest.MODEL_PATTERN``,
  matched in full: no trailing newline).

Building the models once (:func:`services.learning.buildcheck.check_buildable`)
catches the rest before a worker joins Kafka.

A minimal river model::

    [[model]]
    name = "churn"
    kind = "river"
    factory = { path = "river.linear_model.LogisticRegression" }

See ``services/learning/examples/*.toml`` for complete, commented examples.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from schemas.errors import ConfigError
from schemas.manifest import MODEL_PATTERN
from services.learning.detector_params import check_detector_params
from services.learning.factory import check as check_factory

Label = bool | int | float | str
TriggerName = Literal[
    "count", "drift", "interval", "metric", "shutdown", "manual", "config_change", "initial"
]
DETECTOR_KINDS = ("ADWIN", "PageHinkley", "KSWIN", "DDM", "EDDM", "HDDM_A", "HDDM_W", "FHDDM")
METRIC_NAMES = ("accuracy", "log_loss", "cross_entropy", "mae", "rmse")
#: Shortest wall-clock interval a trigger may have, in seconds.
MIN_INTERVAL_S = 0.001
#: Count settings above this are refused (the trainer does float arithmetic on them).
MAX_COUNT = 10**12


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class FactoryConfig(_Frozen):
    """A class or registered builder by dotted path, and its keyword parameters.

    The path and every nested ``{factory = ..., params = ...}`` table are
    resolved when the configuration loads (:func:`services.learning.factory.check`).
    """

    path: str = Field(min_length=3, max_length=256)
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _admitted(self) -> FactoryConfig:
        try:
            check_factory(self.path, self.params)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return self


class EncodingConfig(_Frozen):
    """How a torch model sees the feature map: hashed into ``buckets`` rows.

    ``name=value`` for strings and ``name`` for numbers (the value is the
    row's weight; bools count as 1.0 / 0.0) pick a row by a keyed BLAKE2b
    hash salted with ``hash_seed``. ``sparse`` makes embedding gradients
    sparse so a step touches only the rows of the batch.
    """

    buckets: int = Field(default=1 << 18, ge=2, le=1 << 26)
    hash_seed: int = Field(default=0, ge=0, lt=1 << 64)
    sparse: bool = True


class MetricsConfig(_Frozen):
    """Prequential metrics: names, sliding window length, the key metric.

    Defaults by task: classification ``accuracy`` + ``log_loss`` (binary
    labels; use ``cross_entropy`` for multiclass), regression ``mae`` +
    ``rmse``. ``key`` defaults to the first name.
    """

    names: tuple[Literal["accuracy", "log_loss", "cross_entropy", "mae", "rmse"], ...] = ()
    window: int = Field(default=1000, ge=1, le=10_000_000)
    key: str | None = None


class AdaptiveConfig(_Frozen):
    """Adaptive count interval: shrink after drift, relax back once settled.

    After a drift the count interval becomes ``max(min_every_n, interval *
    shrink)``; at each later count checkpoint with no drift since the last one
    and the windowed key error moved by at most ``settle_tolerance``, it
    becomes ``min(every_n, ceil(interval * relax))``.
    """

    min_every_n: int = Field(default=100, ge=1, le=MAX_COUNT)
    shrink: float = Field(default=0.25, gt=0, le=1)
    relax: float = Field(default=2.0, ge=1, le=1000)
    settle_tolerance: float = Field(default=0.01, ge=0)


class MetricTriggerConfig(_Frozen):
    """Checkpoint when ``metric`` improved by ``min_delta`` since the last checkpoint."""

    metric: str
    min_delta: float = Field(gt=0)
    relative: bool = False
    min_examples: int = Field(default=0, ge=0)


class TriggersConfig(_Frozen):
    """Which checkpoint triggers are on; any combination.

    ``interval_s`` is at least :data:`MIN_INTERVAL_S` and finite.
    """

    every_n: int | None = Field(default=10_000, ge=1, le=MAX_COUNT)
    adaptive: AdaptiveConfig | None = None
    on_drift: bool = True
    interval_s: float | None = Field(default=None, ge=MIN_INTERVAL_S)
    metric: MetricTriggerConfig | None = None
    on_shutdown: bool = True
    manual: bool = True
    on_config_change: bool = True


class DetectorConfig(_Frozen):
    """One river drift detector and what it is fed.

    ``input = "error"`` feeds 1 for a wrong prediction and 0 for a right one
    (classification; for regression the absolute error). ``"loss"`` feeds the
    per-example loss (log loss or absolute error). The DDM family (DDM, EDDM,
    HDDM_A, HDDM_W, FHDDM) accepts only ``"error"`` on classification.

    ``direction = "increase"`` (the default) counts an ADWIN detection as
    drift only when the error or loss went *up*: ADWIN flags any change of
    the mean, including the drop of a model that is still learning, which is
    no reason to checkpoint for drift. Such drops are counted as
    ``improvements``. ``"any"`` keeps every detection. The DDM family and
    PageHinkley's default mode already watch for increases; KSWIN compares
    distributions and has no direction.
    """

    kind: Literal["ADWIN", "PageHinkley", "KSWIN", "DDM", "EDDM", "HDDM_A", "HDDM_W", "FHDDM"]
    params: dict[str, Any] = Field(default_factory=dict)
    input: Literal["error", "loss"] = "error"
    direction: Literal["increase", "any"] = "increase"

    @model_validator(mode="after")
    def _bounded(self) -> DetectorConfig:
        try:
            check_detector_params(self.kind, self.params)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return self


class PolicyConfig(_Frozen):
    """One retention policy by the checkpoint store's name, with its parameters."""

    policy: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    params: dict[str, Any] = Field(default_factory=dict)


class RetentionConfig(_Frozen):
    """Retention policies by the checkpoint store's names, kept as data.

    :func:`services.learning.retention.build_retention` turns them into the
    store's policy objects; a checkpoint is kept when any policy keeps it.
    """

    policies: tuple[PolicyConfig, ...] = ()


class PromotionConfig(_Frozen):
    """The validation gateway's policy for the model's candidate checkpoints.

    A deterministic ``holdout_percent`` share of requests (by
    :func:`services.server.routing.in_holdout` of ``request_id``) is never
    learned by the trainer; the gateway keeps the ``holdout_size`` most recent
    of them and scores each candidate and the live version on the same ones,
    by ``metric`` (default: the model's key metric). A candidate passes when
    every sanity check passes and it is not worse than live by more than
    ``tolerance`` (in the metric's units), on at least ``min_examples``
    examples. ``mode``: ``manual`` records the verdict only; ``auto`` also
    promotes a candidate that passed. With nothing live yet, a candidate is
    judged at once on whatever held-out examples there are (possibly none),
    by its sanity checks alone: ``auto`` promotes the first that passes them
    (see :mod:`services.validation.gateway`).

    ``canary``: a candidate that passed is not promoted but set as the
    model's canary at ``canary_percent`` percent of the traffic (0 < p <= 50;
    with nothing live there is no canary to set, and the first candidate is
    promoted as in ``auto``). Once ``canary_examples`` attributed examples
    served by it on the canary route were scored on ``metric`` (their logged
    prediction against the feedback), it is compared with the live version
    scored the same way on its live-route examples of the same period:
    promoted when not worse than live by more than ``tolerance``, else
    rejected and the canary cleared. With ``canary_confidence`` above 0 a
    rejection also needs the canary worse at that confidence (a one-sided
    Welch test of the two routes' per-example losses: different requests, so
    not paired), so a canary is not refused for the noise of a small sample;
    it passed the same-request holdout comparison already, and the guard
    watches it once live. While a canary runs, newer candidates wait (see
    :mod:`services.validation.canary`).

    ``shadow_examples`` > 0 (default 0: off) puts a shadow stage first in
    ``auto`` and ``canary`` mode (with a live version): a candidate that
    passed is set as the model's shadow, judged on that many shadow answers
    paired with the live answers to the same requests (the joiner's
    ``ShadowScore``), by the same metric and tolerance, then promoted
    (``auto``) or set as canary (``canary``), or rejected and the shadow
    cleared (see :mod:`services.validation.shadow`). ``manual`` ignores it.
    """

    mode: Literal["manual", "auto", "canary"] = "manual"
    metric: Literal["accuracy", "log_loss", "cross_entropy", "mae", "rmse"] | None = None
    tolerance: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    min_examples: int = Field(default=200, ge=1, le=MAX_COUNT)
    holdout_percent: float = Field(default=10.0, ge=0.0, le=50.0, allow_inf_nan=False)
    holdout_size: int = Field(default=2_000, ge=1, le=1_000_000)
    canary_percent: float = Field(default=10.0, gt=0.0, le=50.0, allow_inf_nan=False)
    canary_examples: int = Field(default=200, ge=1, le=MAX_COUNT)
    canary_confidence: float = Field(default=0.95, ge=0.0, lt=1.0, allow_inf_nan=False)
    shadow_examples: int = Field(default=0, ge=0, le=MAX_COUNT)


class GuardConfig(_Frozen):
    """The guard's automatic rollback of a regressed live version.

    After each promotion the guard scores the live version and the one it
    replaced on the same held-out examples that arrived since the promotion;
    once there are ``min_examples`` of them, it rolls back when live is worse
    by more than ``threshold`` on ``metric`` (default: the promotion metric)
    or fails its sanity checks, and otherwise keeps it (judging again every
    ``min_examples`` new examples until ``watch_examples`` were seen). After
    a rollback the guard waits ``cooldown_s`` before it judges that model
    again, and the gateway process never promotes a version its guard rolled
    back (an operator still can; the memory is the process's, see
    :mod:`services.validation.guard`). Until the guard has judged a new live
    version once, and during a cooldown, the gateway holds candidates (newest
    wins): one unvalidated change at a time.

    A regression must also be significant: with ``confidence`` above 0, live
    must be worse request by request, by the one-sided sign test on the
    examples both scored, at that confidence (p <= 1 - ``confidence``), so a
    difference of a few examples in a small sample is not enough (at 0.95 no
    fewer than 5 requests on which the two differ can be significant: 0.5**5 <
    0.05). 0 turns the test off (the threshold alone decides).

    ``detector`` (optional) watches the live error stream: every live-route
    answer scored against its feedback, whichever version served it, as the
    trainer's detectors are fed (:mod:`services.learning.drift`). When it
    fires on an answer of a watched live version, the guard judges at once,
    on the same-request comparison above, once ``detector_min_examples``
    held-out examples came since the change (instead of waiting for
    ``min_examples``): the alarm makes the judgement early, the comparison
    with the replaced version decides it, so a drift in the traffic, which
    hurts both versions alike, rolls nothing back.
    """

    enabled: bool = False
    metric: Literal["accuracy", "log_loss", "cross_entropy", "mae", "rmse"] | None = None
    threshold: float = Field(default=0.05, ge=0.0, allow_inf_nan=False)
    min_examples: int = Field(default=100, ge=1, le=MAX_COUNT)
    watch_examples: int = Field(default=2_000, ge=1, le=MAX_COUNT)
    cooldown_s: float = Field(default=60.0, ge=0.0, le=86_400.0, allow_inf_nan=False)
    confidence: float = Field(default=0.95, ge=0.0, lt=1.0, allow_inf_nan=False)
    detector: DetectorConfig | None = None
    detector_min_examples: int = Field(default=20, ge=1, le=MAX_COUNT)


class ModelConfig(_Frozen):
    """Everything driftloop needs to train and checkpoint one model."""

    name: str
    kind: Literal["river", "torch"]
    task: Literal["classification", "regression"] | None = None
    factory: FactoryConfig
    encoding: EncodingConfig | None = None
    loss: Literal["bce", "mse", "l1", "huber"] | None = None
    optimizer: FactoryConfig | None = None
    positive_label: Label | None = None
    feature_values: Literal["auto", "numeric", "any"] = "auto"
    batch_size: int = Field(default=32, ge=1, le=1_000_000)
    seed: int = Field(default=0, ge=0, lt=1 << 63)
    metrics: MetricsConfig = MetricsConfig()
    triggers: TriggersConfig = TriggersConfig()
    drift: tuple[DetectorConfig, ...] = ()
    dedup_horizon: int = Field(default=100_000, ge=0, le=100_000_000)
    retention: RetentionConfig = RetentionConfig()
    promotion: PromotionConfig = PromotionConfig()
    guard: GuardConfig = GuardConfig()

    @model_validator(mode="before")
    @classmethod
    def _no_widening(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "allowed_prefixes" in data:
            raise ValueError(
                "allowed_prefixes was removed: a model config cannot widen what its factories"
                " may name (classes under river's and torch's model bases, and the builders"
                " registered in services.learning.factory); delete the key"
            )
        return data

    @field_validator("name")
    @classmethod
    def _store_name(cls, name: str) -> str:
        # fullmatch: `$` alone would also match before a trailing newline.
        if re.fullmatch(MODEL_PATTERN, name) is None:
            raise ValueError(
                f"model name {name!r} is not one the checkpoint store accepts: 1 to 64 letters,"
                " digits, '.', '_' or '-', starting with a letter or digit"
            )
        return name

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.kind == "torch":
            if self.task is None:
                raise ValueError("torch models need task = 'classification' or 'regression'")
            if self.optimizer is None:
                raise ValueError("torch models need an [optimizer] table")
        elif self.encoding is not None or self.loss is not None or self.optimizer is not None:
            raise ValueError("encoding, loss and optimizer apply to torch models only")
        if self.loss == "bce" and self.task == "regression":
            raise ValueError("loss 'bce' needs task = 'classification'")
        key = self.metrics.key
        if key is not None and key not in self.metric_names:
            raise ValueError(f"metrics.key {key!r} is not one of {list(self.metric_names)}")
        for where, metric in (("promotion", self.promotion.metric), ("guard", self.guard.metric)):
            if metric is not None and metric not in self.metric_names:
                raise ValueError(
                    f"{where}.metric {metric!r} is not one of the model's metrics"
                    f" {list(self.metric_names)}"
                )
        return self

    @property
    def metric_names(self) -> tuple[str, ...]:
        if self.metrics.names:
            return tuple(self.metrics.names)
        if self.task == "regression":
            return ("mae", "rmse")
        return ("accuracy", "log_loss")

    @property
    def key_metric(self) -> str:
        return self.metrics.key or self.metric_names[0]

    @property
    def promotion_metric(self) -> str:
        """The metric the gateway judges candidates by."""
        return self.promotion.metric or self.key_metric

    @property
    def guard_metric(self) -> str:
        """The metric the guard judges the live version by."""
        return self.guard.metric or self.promotion_metric

    @property
    def torch_loss(self) -> str:
        """The torch loss in force: configured, or ``bce`` / ``mse`` by task."""
        if self.loss is not None:
            return self.loss
        return "mse" if self.task == "regression" else "bce"

    def as_json(self) -> dict[str, Any]:
        """The configuration as JSON-able data (recorded in each manifest)."""
        data: dict[str, Any] = self.model_dump(mode="json")
        return data

    def digest(self) -> str:
        """sha256 of the canonical JSON form: equal digests, equal settings."""
        blob = orjson.dumps(self.as_json(), option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(blob).hexdigest()


class LearningConfig(_Frozen):
    """A configuration file: its models by name."""

    models: tuple[ModelConfig, ...] = Field(alias="model", default=())

    @model_validator(mode="after")
    def _unique(self) -> LearningConfig:
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique; repeated: {dupes}")
        return self

    def model(self, name: str) -> ModelConfig:
        """The model called ``name``; ConfigError when there is none."""
        for m in self.models:
            if m.name == name:
                return m
        raise ConfigError("no such model in the learning config", model=name)


def parse_config(data: Mapping[str, Any], *, source: str = "<data>") -> LearningConfig:
    """Validate already-parsed TOML data; ConfigError names the bad field and its model."""
    try:
        return LearningConfig.model_validate(dict(data))
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = first["loc"]
        where = ".".join(str(p) for p in loc)
        msg = first["msg"].removeprefix("Value error, ")
        raise ConfigError(
            f"invalid learning config: {where}: {msg}",
            path=source,
            model=_model_name(data, loc),
        ) from exc


def _model_name(data: Mapping[str, Any], loc: tuple[int | str, ...]) -> str | None:
    """The ``name`` of the ``[[model]]`` table an error location points into, if any."""
    if len(loc) < 2 or loc[0] != "model" or not isinstance(loc[1], int):
        return None
    models = data.get("model")
    if not isinstance(models, list) or not 0 <= loc[1] < len(models):
        return None
    table = models[loc[1]]
    name = table.get("name") if isinstance(table, Mapping) else None
    if not isinstance(name, str):
        return None
    return name if re.fullmatch(MODEL_PATTERN, name) else repr(name)


def load_config(path: str | Path) -> LearningConfig:
    """Read and validate a TOML learning configuration file.

    Raises
    ------
    ConfigError
        When the file is missing or unreadable, not TOML, or does not validate.
    """
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError("learning config file not found", path=str(p)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"learning config file cannot be read: {exc}", path=str(p)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"learning config is not valid TOML: {exc}", path=str(p)) from exc
    return parse_config(data, source=str(p))


def example_path(name: str) -> Path:
    """Path of a shipped example configuration (``river_logreg`` or ``torch_fm``)."""
    p = Path(__file__).parent / "examples" / f"{name}.toml"
    if not p.is_file():
        raise ConfigError("no such example learning config", path=str(p))
    return p
