"""Model adapters: one seam over river and torch models.

The trainer never touches a model directly; it calls a :class:`ModelAdapter`:

- :meth:`ModelAdapter.test_then_train` scores every example of a micro-batch
  *before* the model learns from it and returns the :class:`Score` of each;
- :meth:`ModelAdapter.live_objects` / :meth:`ModelAdapter.load_objects`
  expose the state the checkpointer saves and restores.

River (:class:`RiverAdapter`): inside a micro-batch each example is scored and
then learned (``learn_one``) in turn, which is exactly
``river.evaluate.progressive_val_score`` whatever the batch size.

Torch (:class:`TorchAdapter`): the batch is scored with the parameters as they
were before the batch, then one optimizer step is taken on the batch loss
(example weights as loss weights). Scoring reuses the training forward pass.

Inference (model servers): :meth:`ModelAdapter.predict_many` scores a batch
of feature maps with no label and changes nothing. An adapter built with
:func:`build_predictor` is inference-only: a torch one builds no optimizer
(``learn`` refuses) and puts its module in ``eval()`` mode, and torch predicts
under ``torch.inference_mode()``; river models are the same objects either way
(river has no optimizer apart from the model).

Labels are converted by :mod:`services.learning.labels`; what each adapter
accepts is checked per example by :meth:`ModelAdapter.validate` (see
:mod:`services.learning.validation`) before the example enters a batch.

A batch is learned entirely or not at all. Torch: parameters change only in
``optimizer.step()``, after everything that can fail on bad input (encoding,
forward, loss, backward), so a failing batch leaves the model untouched.
River: ``learn_one`` runs per example, so when it raises, :class:`RiverAdapter`
rebuilds the pre-batch model and raises :class:`LearnError` naming the
example. It does not copy the model before every batch (a deep copy of the
shipped pipeline took about 7 us per example, a tenth of test-then-train):
it keeps a copy taken at an earlier batch boundary, at most
:data:`ROLLBACK_HORIZON` examples back, and the examples learned since, and
on a failure learns those again on the copy, each exactly as it was learned
the first time (scored first when it was). Learning is deterministic (a
replay of the input reproduces the model bit for bit, which exactly-once
recovery rests on), so the rebuilt model is the pre-batch one; a failure costs
at most ``ROLLBACK_HORIZON`` examples of learning again.

Scoring a river classifier asks the model for its class probabilities once:
when its ``predict_one`` is river's default (the most probable class of
``predict_proba_one``, for a pipeline: of its last step, unless the pipeline
learns unsupervised steps during predict), the predicted class is taken from
those probabilities, as ``predict_one`` would compute it, instead of
predicting a second time.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import math
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from schemas.errors import SHUTDOWN_EXCEPTIONS, ConfigError, DriftloopError, LearnError, SchemaError
from services.learning.config import EncodingConfig, ModelConfig
from services.learning.factory import build, call, resolve
from services.learning.hashing import FeatureHasher, FeatureValue
from services.learning.labels import Label, binary_target, class_label, regression_target
from services.learning.validation import check_features, needs_numeric_features

if TYPE_CHECKING:
    import torch
else:
    from services.lazy_torch import torch  # imported at first use (river-only workers never)

_EPS = 1e-15
#: River: at most this many examples are learned again to roll a failed batch back.
ROLLBACK_HORIZON = 1024


class Example(Protocol):
    """What the trainer and its adapter read from a training example
    (``schemas.events.TrainingExample``). Adapters read the features, label
    and weight; the trainer the ids: ``request_id`` decides whether the
    example is in the model's holdout share (never learned)."""

    @property
    def example_id(self) -> str: ...
    @property
    def request_id(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def features(self) -> Mapping[str, FeatureValue]: ...
    @property
    def label(self) -> Label: ...
    @property
    def weight(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Score:
    """One example scored before learning.

    Attributes
    ----------
    y_true
        The label as the model sees it (class or float target).
    y_pred
        Predicted class or value; None while a classifier knows no class.
    proba
        Class probabilities (classifiers), else None.
    loss
        Per-example loss: log loss of the true class (clamped at 1e-15) for
        classifiers, absolute error for regressors.
    error
        1.0 for a wrong class and 0.0 for a right one (classifiers); the
        absolute error (regressors).
    """

    y_true: Label
    y_pred: Label | None
    proba: dict[Label, float] | None
    loss: float
    error: float


@dataclass(frozen=True, slots=True)
class Prediction:
    """One prediction of :meth:`ModelAdapter.predict_many`.

    Attributes
    ----------
    value
        Predicted class or value; None while a classifier knows no class, or
        when a regressor's output is not finite.
    scores
        Class probabilities (classifiers), else None.
    """

    value: Label | None
    scores: dict[Label, float] | None = None


class PredictError(DriftloopError):
    """The model failed on an input that passed validation (``index``: which one)."""


class ModelAdapter(Protocol):
    """The trainer's (and a model server's) view of a model, river or torch."""

    name: str
    kind: str
    task: str

    def score(self, example: Example) -> Score:
        """Score one example without learning from it."""
        ...

    def learn(self, batch: Sequence[Example]) -> None:
        """Learn from one micro-batch (river: learn_one each; torch: one step)."""
        ...

    def test_then_train(self, batch: Sequence[Example]) -> list[Score]:
        """Score each example of ``batch`` before learning from it, then learn."""
        ...

    def live_objects(self) -> dict[str, Any]:
        """The live objects a checkpointer captures: river ``{"model"}``;
        torch ``{"module", "optimizer"}``."""
        ...

    def load_objects(self, objects: Mapping[str, Any]) -> None:
        """Take the state of objects shaped like :meth:`live_objects` (e.g. copies
        restored from a checkpoint): river replaces its model, torch loads the
        module's and optimizer's state dicts in place."""
        ...

    def target(self, example: Example) -> Label:
        """The label as the model learns it; SchemaError when it cannot be one."""
        ...

    def validate(self, example: Example) -> Label:
        """Check that the model can learn from ``example``; return its target.

        Called by the trainer when an example arrives, before it joins the
        micro-batch. Raises SchemaError with ``field`` ``label`` or
        ``features.<name>``; the example is then dead-lettered, never learned.
        """
        ...

    def state_digest(self) -> str:
        """sha256 over the full model state: equal digests, bitwise-equal state."""
        ...

    def check_features(self, features: Mapping[str, FeatureValue]) -> None:
        """SchemaError (``field`` ``features.<name>``) for a value the model cannot take."""
        ...

    def predict_many(self, features: Sequence[Mapping[str, FeatureValue]]) -> list[Prediction]:
        """Predict each feature map; no label, nothing learned, nothing changed.

        Every map is checked first (:meth:`check_features`: SchemaError with
        ``index`` naming which), so a bad one predicts nothing. A failure of
        model code on a valid input raises :class:`PredictError` with its index.
        """
        ...


def _classification_score(
    y_true: Label, y_pred: Label | None, proba: Mapping[Label, float]
) -> Score:
    p_true = proba.get(y_true, 0.0)
    loss = -math.log(min(max(p_true, _EPS), 1.0 - _EPS)) if proba else -math.log(_EPS)
    error = 0.0 if y_pred is not None and y_pred == y_true else 1.0
    return Score(y_true, y_pred, dict(proba), loss, error)


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _check_all(adapter: ModelAdapter, features: Sequence[Mapping[str, FeatureValue]]) -> None:
    for i, x in enumerate(features):
        try:
            adapter.check_features(x)
        except SchemaError as exc:
            raise SchemaError(exc.reason, field=exc.field, index=i, **exc.context) from None


def _contained(name: str, index: int, exc: BaseException) -> PredictError:
    """A PredictError for a failure of model code (re-raising what means "stop")."""
    if isinstance(exc, SHUTDOWN_EXCEPTIONS):
        raise exc
    return PredictError(f"{type(exc).__name__}: {exc}", model=name, index=index)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _default_predict_one(model: Any) -> bool:
    """Whether ``model.predict_one(x)`` is river's default for classifiers, the most
    probable class of ``predict_proba_one(x)`` (for a pipeline: of its last step's)."""
    from river import base, compose

    if isinstance(model, compose.Pipeline):
        cls = type(model)
        return (
            cls.predict_one is compose.Pipeline.predict_one
            and cls.predict_proba_one is compose.Pipeline.predict_proba_one
            and bool(model.steps)
            and _default_predict_one(list(model.steps.values())[-1])
        )
    return getattr(type(model), "predict_one", None) is base.Classifier.predict_one


class RiverAdapter:
    """A river classifier or regressor (any ``river.base.Estimator`` by dotted path)."""

    kind = "river"

    def __init__(self, config: ModelConfig, model: Any | None = None) -> None:
        from river import base

        self.name = config.name
        self.model = (
            model if model is not None else build(config.factory.path, config.factory.params)
        )
        if isinstance(self.model, base.Classifier):
            task = "classification"
        elif isinstance(self.model, base.Regressor):
            task = "regression"
        else:
            raise ConfigError(
                "river factory built neither a classifier nor a regressor",
                model=config.name,
                path=config.factory.path,
            )
        if config.task is not None and config.task != task:
            raise ConfigError(
                f"config says task={config.task} but the river model is a {task} model",
                model=config.name,
            )
        self.task: str = task
        self._positive = config.positive_label
        #: Binary classifiers (LogisticRegression, ...) learn bools only.
        self.binary = task == "classification" and not getattr(self.model, "_multiclass", True)
        self.numeric_features = needs_numeric_features(self.model, config.feature_values)
        params = inspect.signature(self.model.learn_one).parameters
        self._accepts_w = "w" in params or any(
            p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()
        )
        self._class_from_proba = task == "classification" and _default_predict_one(self.model)
        #: The model at an earlier batch boundary and the examples learned since
        #: (with whether each was scored first): what a rollback rebuilds from.
        self._base: Any | None = None
        self._since_base: list[tuple[Example, bool]] = []

    def target(self, example: Example) -> Label:
        if self.binary:
            return binary_target(example.label, positive_label=self._positive, model=self.name)
        if self.task == "classification":
            if self._positive is not None:
                return class_label(example.label) == class_label(self._positive)
            return class_label(example.label)
        return regression_target(example.label, model=self.name)

    def validate(self, example: Example) -> Label:
        y = self.target(example)
        check_features(example.features, numeric_only=self.numeric_features, model=self.name)
        return y

    def score(self, example: Example) -> Score:
        x = dict(example.features)
        y_true = self.target(example)
        if self.task == "classification":
            proba = self.model.predict_proba_one(x)
            if self._class_from_proba and not getattr(
                self.model, "_LEARN_UNSUPERVISED_DURING_PREDICT", False
            ):
                y_pred = max(proba, key=proba.get) if proba else None  # river's predict_one
            else:
                y_pred = self.model.predict_one(x)
            return _classification_score(y_true, y_pred, proba)
        y_pred = float(self.model.predict_one(x))
        err = abs(y_pred - float(y_true))
        return Score(y_true, y_pred, None, err, err)

    def _learn_one(self, example: Example, y: Label) -> None:
        x = dict(example.features)
        if self._accepts_w and example.weight != 1.0:
            self.model.learn_one(x, y, w=example.weight)
        else:
            self.model.learn_one(x, y)

    def learn(self, batch: Sequence[Example]) -> None:
        self._atomically(batch, scored=False)

    def test_then_train(self, batch: Sequence[Example]) -> list[Score]:
        return self._atomically(batch, scored=True)

    def _step(self, example: Example, *, scored: bool) -> Score | None:
        """Learn one example; ``scored``: score it first (test-then-train) and return that."""
        if not scored:
            self._learn_one(example, self.target(example))
            return None
        s = self.score(example)
        self._learn_one(example, s.y_true)
        return s

    def _atomically(self, batch: Sequence[Example], *, scored: bool) -> list[Score]:
        """Learn each example of ``batch`` (scored first when ``scored``: their scores
        are returned); on a failure put the pre-batch model back and raise LearnError
        naming the example (nothing of the batch is learned)."""
        if self._base is None or len(self._since_base) + len(batch) > ROLLBACK_HORIZON:
            self._base, self._since_base = copy.deepcopy(self.model), []
        scores: list[Score] = []
        for i, example in enumerate(batch):
            try:
                s = self._step(example, scored=scored)
            except BaseException as exc:  # model code may raise any (a pyo3 PanicException)
                if isinstance(exc, SHUTDOWN_EXCEPTIONS):
                    raise
                self._roll_back()
                raise LearnError(
                    f"{type(exc).__name__}: {exc}",
                    index=i,
                    model=self.name,
                    example_id=example.example_id,
                ) from exc
            if s is not None:
                scores.append(s)
        self._since_base.extend((example, scored) for example in batch)
        return scores

    def _roll_back(self) -> None:
        """Make the model the one of the last batch boundary again: the copy of an
        earlier boundary, with the examples learned since learned again on it."""
        self.model, self._base = self._base, None
        for example, scored in self._since_base:
            self._step(example, scored=scored)
        self._since_base = []

    def check_features(self, features: Mapping[str, FeatureValue]) -> None:
        check_features(features, numeric_only=self.numeric_features, model=self.name)

    def predict_many(self, features: Sequence[Mapping[str, FeatureValue]]) -> list[Prediction]:
        _check_all(self, features)
        out: list[Prediction] = []
        for i, x in enumerate(features):
            try:
                out.append(self._predict_one(dict(x)))
            except BaseException as exc:  # model code may raise any (a pyo3 PanicException)
                raise _contained(self.name, i, exc) from exc
        return out

    def _predict_one(self, x: dict[str, FeatureValue]) -> Prediction:
        if self.task == "classification":
            proba = self.model.predict_proba_one(x)
            scores = {k: float(p) for k, p in proba.items()}
            if not all(math.isfinite(p) for p in scores.values()):
                return Prediction(None)
            return Prediction(self.model.predict_one(x), scores)
        return Prediction(_finite_or_none(float(self.model.predict_one(x))))

    def live_objects(self) -> dict[str, Any]:
        return {"model": self.model}

    def load_objects(self, objects: Mapping[str, Any]) -> None:
        self.model = objects["model"]
        self._base, self._since_base = None, []

    def state_digest(self) -> str:
        # Pickle bytes depend on object sharing (a feature-name string shared
        # with the input vs. one rebuilt by unpickling), so hash the bytes
        # after one round trip through the restricted unpickler: equal state,
        # equal bytes, whether the model was trained or restored.
        from services.checkpoints.state.safe_pickle import safe_loads

        canonical = pickle.dumps(safe_loads(pickle.dumps(self.model, protocol=5)), protocol=5)
        return hashlib.sha256(canonical).hexdigest()


#: torch.nn loss classes by configured name (looked up when a torch model is built).
_LOSSES: dict[str, str] = {
    "bce": "BCEWithLogitsLoss",
    "mse": "MSELoss",
    "l1": "L1Loss",
    "huber": "HuberLoss",
}


class TorchAdapter:
    """A torch module over hashed features (see :mod:`services.learning.torch_models`)."""

    kind = "torch"

    def __init__(self, config: ModelConfig, *, inference: bool = False) -> None:
        # ModelConfig guarantees both for torch models.
        assert config.task is not None  # noqa: S101 - narrows a type that validation guarantees; guards no input
        assert config.optimizer is not None  # noqa: S101 - narrows a type that validation guarantees; guards no input
        #: Inference-only: no optimizer is built, the module is in eval mode, learning refuses.
        self.inference = inference
        self.name = config.name
        self.task: str = config.task
        self._positive = config.positive_label
        enc = config.encoding or EncodingConfig()
        self.hasher = FeatureHasher(enc.buckets, enc.hash_seed)
        params = {**config.factory.params, "buckets": enc.buckets, "sparse": enc.sparse}
        params.setdefault("seed", config.seed)
        module = build(config.factory.path, params)
        if not isinstance(module, torch.nn.Module):
            raise ConfigError(
                "torch factory did not build a torch.nn.Module",
                model=config.name,
                path=config.factory.path,
            )
        self.module: torch.nn.Module = module
        self.loss_name = config.torch_loss
        self._loss = getattr(torch.nn, _LOSSES[self.loss_name])(reduction="none")
        self._optimizer: torch.optim.Optimizer | None = None
        if inference:
            self.module.eval()
            return
        opt_factory = resolve(config.optimizer.path)
        if not (isinstance(opt_factory, type) and issubclass(opt_factory, torch.optim.Optimizer)):
            raise ConfigError(
                "the optimizer path names no torch.optim.Optimizer class",
                model=config.name,
                path=config.optimizer.path,
            )
        try:
            self._optimizer = call(
                opt_factory,
                config.optimizer.path,
                self.module.parameters(),
                **config.optimizer.params,
            )
        except ConfigError as exc:
            raise ConfigError(exc.message, model=config.name, **exc.context) from exc

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The optimizer; an inference-only adapter has none (LearnError)."""
        if self._optimizer is None:
            raise LearnError("an inference-only adapter cannot learn", index=0, model=self.name)
        return self._optimizer

    def target(self, example: Example) -> Label:
        if self.task == "classification":
            return binary_target(example.label, positive_label=self._positive, model=self.name)
        return regression_target(example.label, model=self.name)

    def validate(self, example: Example) -> Label:
        y = self.target(example)
        check_features(example.features, numeric_only=False, model=self.name)
        return y

    def _scores(self, out: torch.Tensor, targets: Sequence[Label]) -> list[Score]:
        scores = []
        values = out.detach().tolist()
        for raw, y_true in zip(values, targets, strict=True):
            if self.task == "classification":
                p = _sigmoid(raw)
                proba: dict[Label, float] = {False: 1.0 - p, True: p}
                scores.append(_classification_score(y_true, p >= 0.5, proba))
            else:
                err = abs(raw - float(y_true))
                scores.append(Score(y_true, raw, None, err, err))
        return scores

    def _forward(self, batch: Sequence[Example]) -> torch.Tensor:
        indices, offsets, weights = self.hasher.encode_batch([e.features for e in batch])
        out: torch.Tensor = self.module(indices, offsets, weights)
        return out

    def score(self, example: Example) -> Score:
        with torch.no_grad():
            out = self._forward([example])
        return self._scores(out, [self.target(example)])[0]

    def _step(self, out: torch.Tensor, targets: Sequence[Label], batch: Sequence[Example]) -> None:
        y = torch.tensor([float(t) for t in targets], dtype=torch.float32)
        w = torch.tensor([float(e.weight) for e in batch], dtype=torch.float32)
        loss = (self._loss(out, y) * w).sum() / w.sum().clamp_min(_EPS)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def learn(self, batch: Sequence[Example]) -> None:
        self.optimizer  # noqa: B018 - an inference-only adapter refuses before any forward pass
        if batch:
            targets = [self.target(e) for e in batch]
            self._step(self._forward(batch), targets, batch)

    def test_then_train(self, batch: Sequence[Example]) -> list[Score]:
        self.optimizer  # noqa: B018 - an inference-only adapter refuses before any forward pass
        if not batch:
            return []
        targets = [self.target(e) for e in batch]
        out = self._forward(batch)
        scores = self._scores(out, targets)
        self._step(out, targets, batch)
        return scores

    def check_features(self, features: Mapping[str, FeatureValue]) -> None:
        check_features(features, numeric_only=False, model=self.name)

    def predict_many(self, features: Sequence[Mapping[str, FeatureValue]]) -> list[Prediction]:
        if not features:
            return []
        _check_all(self, features)
        try:
            with torch.inference_mode():
                indices, offsets, weights = self.hasher.encode_batch(list(features))
                values: list[float] = self.module(indices, offsets, weights).tolist()
        except BaseException as exc:  # model code may raise any
            raise _contained(self.name, 0, exc) from exc
        if self.task == "classification":
            out = []
            for raw in values:
                if math.isnan(raw):
                    out.append(Prediction(None))
                    continue
                p = _sigmoid(raw)
                out.append(Prediction(p >= 0.5, {False: 1.0 - p, True: p}))
            return out
        return [Prediction(_finite_or_none(raw)) for raw in values]

    def live_objects(self) -> dict[str, Any]:
        # An inference-only adapter has no optimizer: None (restores the module only).
        return {"module": self.module, "optimizer": self._optimizer}

    def load_objects(self, objects: Mapping[str, Any]) -> None:
        if objects["module"] is not self.module:
            self.module.load_state_dict(objects["module"].state_dict())
        optimizer = objects.get("optimizer")
        if (
            self._optimizer is not None
            and optimizer is not None
            and optimizer is not self._optimizer
        ):
            self._optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))

    def state_digest(self) -> str:
        h = hashlib.sha256()
        for key, tensor in sorted(self.module.state_dict().items()):
            h.update(key.encode())
            h.update(tensor.detach().contiguous().numpy().tobytes())
        opt_state = self._optimizer.state_dict()["state"] if self._optimizer is not None else {}
        for pid, pstate in sorted(opt_state.items()):
            for key, value in sorted(pstate.items()):
                h.update(f"{pid}.{key}".encode())
                if isinstance(value, torch.Tensor):
                    h.update(value.detach().contiguous().numpy().tobytes())
                else:
                    h.update(repr(value).encode())
        return h.hexdigest()


def build_adapter(config: ModelConfig) -> ModelAdapter:
    """The adapter for ``config``: :class:`RiverAdapter` or :class:`TorchAdapter`.

    Raises
    ------
    ConfigError
        When the factory is not allowed, fails, or builds the wrong kind of model.
    """
    if config.kind == "river":
        return RiverAdapter(config)
    return TorchAdapter(config)


def build_predictor(config: ModelConfig) -> ModelAdapter:
    """An inference-only adapter for ``config`` (model servers): a torch one builds
    no optimizer and its module is in eval mode; it refuses to learn.

    Raises
    ------
    ConfigError
        As :func:`build_adapter`.
    """
    if config.kind == "river":
        return RiverAdapter(config)
    return TorchAdapter(config, inference=True)
