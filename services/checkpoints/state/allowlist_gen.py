"""Regenerate the unpickler's allow-list from what river state actually pickles.

Run ``python -m services.checkpoints.state.allowlist_gen`` after a river or
numpy upgrade (or when a new model family is shipped): it trains the
:func:`corpus` (the shipped examples through the online trainer, and river's
common estimators, metrics and drift detectors), pickles each one as the
checkpoint code does, loads the bytes back with a *recording* unpickler and
prints every ``(module, qualname)`` pair and bound method it saw, as the
literals to paste into :mod:`.safe_pickle`. Review the diff by hand: a new
pair must be a class or reconstruct function of data (no I/O, no import, no
unpickling, no evaluation), never a function that acts.

The corpus is also what ``tests/unit/test_safe_pickle_roundtrip.py`` checks:
each specimen loads through :func:`.safe_pickle.safe_loads` and behaves as it
did before it was saved.
"""

from __future__ import annotations

import builtins
import importlib
import io
import pickle
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

#: How many examples each specimen learns before it is pickled.
LEARN = 300
#: Trees learn more, so that they split (and adaptive ones grow alternate branches).
TREE_LEARN = 3000


@dataclass(frozen=True)
class Specimen:
    """One pickled river object and how to observe its behaviour.

    ``probe(obj)`` returns something comparable with ``==`` (predictions,
    metric values, drift flags on further input); it may mutate ``obj``.
    """

    name: str
    obj: Any
    probe: Callable[[Any], Any]


def _river(module: str) -> Any:
    """A river module, untyped (river ships no type information)."""
    return importlib.import_module(f"river.{module}")


def _rows(seed: int, n: int = LEARN) -> list[tuple[dict[str, Any], bool, float]]:
    """``(x, y_class, y_value)`` rows: three numbers, one category, one count."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b, c = rng.random(), rng.gauss(0, 1), rng.uniform(-2, 2)
        colour = rng.choice(["red", "green", "blue"])
        red = 0.4 if colour == "red" else 0.0
        x = {"a": a, "b": b, "c": c, "colour": colour}
        out.append((x, a + 0.3 * b + red > 0.7, 2 * a - b + 0.5 * c + 3 * red))
    return out


def _numeric(x: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in x.items() if isinstance(v, float)}


def _counts(x: dict[str, Any]) -> dict[str, int]:
    return {"a": int(x["a"] * 10), "b": int(abs(x["b"]) * 5), x["colour"]: 1}


def _estimators() -> Iterator[tuple[str, Any, str, Callable[[dict[str, Any]], Any]]]:
    """``(name, estimator, task, feature map)``; task: classify, regress or transform."""
    compose, linear_model, naive_bayes, optim, preprocessing, tree = map(
        _river, ("compose", "linear_model", "naive_bayes", "optim", "preprocessing", "tree")
    )

    num = _numeric
    yield (
        "LogisticRegression",
        linear_model.LogisticRegression(
            optimizer=optim.SGD(0.1),
            loss=optim.losses.Log(),
            initializer=optim.initializers.Zeros(),
        ),
        "classify",
        num,
    )
    yield (
        "LogisticRegression-adam",
        linear_model.LogisticRegression(
            optimizer=optim.Adam(0.05), initializer=optim.initializers.Normal(seed=3), l2=0.01
        ),
        "classify",
        num,
    )
    yield (
        "LinearRegression",
        linear_model.LinearRegression(
            optimizer=optim.RMSProp(), loss=optim.losses.Squared(), intercept_lr=0.05
        ),
        "regress",
        num,
    )
    yield "LinearRegression-adagrad", linear_model.LinearRegression(
        optimizer=optim.AdaGrad(), loss=optim.losses.Huber(), l1=0.001,
        intercept_lr=optim.schedulers.InverseScaling(0.1),
    ), "regress", num  # fmt: skip
    yield "PAClassifier", linear_model.PAClassifier(C=0.5, mode=2), "classify", num
    yield "Perceptron", linear_model.Perceptron(l2=0.01), "classify", num
    # Trees see numbers and a category, so numeric and nominal branches are both built.
    for leaf in ("nba", "mc", "nb"):
        htc = tree.HoeffdingTreeClassifier(
            grace_period=30, delta=1e-3, leaf_prediction=leaf, nominal_attributes=["colour"]
        )
        yield f"HoeffdingTreeClassifier-{leaf}", htc, "classify", dict
    binary = tree.HoeffdingTreeClassifier(grace_period=30, delta=1e-3, binary_split=True)
    yield "HoeffdingTreeClassifier-binary", binary, "classify", dict
    for split in (False, True):
        hatc = tree.HoeffdingAdaptiveTreeClassifier(
            grace_period=30, delta=1e-3, binary_split=split, seed=5
        )
        yield f"HoeffdingAdaptiveTreeClassifier-{split}", hatc, "classify", dict
    for leaf, features in (("adaptive", num), ("model", num), ("mean", dict)):
        htr = tree.HoeffdingTreeRegressor(grace_period=30, delta=1e-3, leaf_prediction=leaf)
        yield f"HoeffdingTreeRegressor-{leaf}", htr, "regress", features
    yield "GaussianNB", naive_bayes.GaussianNB(), "classify", num
    yield "MultinomialNB", naive_bayes.MultinomialNB(alpha=1), "classify", _counts
    yield "StandardScaler", preprocessing.StandardScaler(), "transform", num
    yield "MinMaxScaler", preprocessing.MinMaxScaler(), "transform", num
    yield (
        "OneHotEncoder",
        preprocessing.OneHotEncoder(),
        "transform",
        lambda x: {"colour": x["colour"]},
    )
    yield "FeatureHasher", preprocessing.FeatureHasher(n_features=16, seed=1), "transform", dict
    union = compose.TransformerUnion(
        compose.Select("a", "b") | preprocessing.StandardScaler(),
        compose.Select("colour") | preprocessing.OneHotEncoder(),
    )
    yield "Pipeline", union | linear_model.LogisticRegression(), "classify", dict
    yield (
        "Pipeline-regressor",
        (
            compose.Select("a", "b", "c")
            | preprocessing.MinMaxScaler()
            | tree.HoeffdingTreeRegressor()
        ),
        "regress",
        dict,
    )


def _learned_estimators() -> Iterator[Specimen]:
    rows = _rows(1)
    grown = _rows(1, TREE_LEARN)
    probes = _rows(2, 40)
    for name, est, task, fmap in _estimators():
        is_tree = hasattr(est, "n_branches")
        for x, yc, yv in grown if is_tree else rows:
            if task == "classify":
                est.learn_one(fmap(x), yc)
            elif task == "regress":
                est.learn_one(fmap(x), yv)
            else:
                est.learn_one(fmap(x))
        if is_tree and not est.n_branches:
            raise RuntimeError(f"{name} did not split: its branch classes would be missed")

        def probe(obj: Any, task: str = task, fmap: Any = fmap) -> Any:
            if task == "classify":
                return [obj.predict_proba_one(fmap(x)) for x, _, _ in probes]
            if task == "regress":
                return [obj.predict_one(fmap(x)) for x, _, _ in probes]
            return [obj.transform_one(fmap(x)) for x, _, _ in probes]

        yield Specimen(name, est, probe)


def _metrics() -> Iterator[Specimen]:
    metrics, utils = _river("metrics"), _river("utils")

    rows = _rows(3)
    for cls, kind in (
        (metrics.Accuracy, "label"),
        (metrics.LogLoss, "proba"),
        (metrics.CrossEntropy, "probas"),
        (metrics.MAE, "value"),
        (metrics.RMSE, "value"),
    ):
        for rolling in (False, True):
            metric = utils.Rolling(cls, window_size=50) if rolling else cls()
            rng = random.Random(4)
            for _, yc, yv in rows:
                p = rng.random()
                pred: Any = {
                    "label": p > 0.5,
                    "proba": p,
                    "probas": {True: p, False: 1 - p},
                    "value": yv + rng.gauss(0, 0.5),
                }[kind]
                metric.update(yc if kind != "value" else yv, pred)
            name = f"Rolling({cls.__name__})" if rolling else cls.__name__
            yield Specimen(name, metric, lambda m: m.get())


def _detectors() -> Iterator[Specimen]:
    drift, binary = _river("drift"), _river("drift.binary")

    made: list[tuple[str, Any, bool]] = [
        ("ADWIN", drift.ADWIN(delta=0.01), False),
        ("KSWIN", drift.KSWIN(seed=1), False),
        *((f"PageHinkley-{m}", drift.PageHinkley(mode=m), False) for m in ("both", "up", "down")),
        ("DDM", binary.DDM(), True),
        ("EDDM", binary.EDDM(), True),
        ("HDDM_A", binary.HDDMA(), True),
        ("HDDM_W", binary.HDDMW(), True),
        ("FHDDM", binary.FHDDM(), True),
    ]
    for name, detector, is_binary in made:
        rng = random.Random(5)
        for i in range(LEARN):
            rate = 0.1 if i < LEARN // 2 else 0.5
            detector.update(float(rng.random() < rate) if is_binary else rng.gauss(rate, 0.2))

        def probe(d: Any, is_binary: bool = is_binary) -> Any:
            rng = random.Random(6)
            seen = []
            for _ in range(100):
                d.update(float(rng.random() < 0.7) if is_binary else rng.gauss(1.0, 0.2))
                seen.append(d.drift_detected)
            return seen, getattr(d, "estimation", None)

        yield Specimen(name, detector, probe)


def _shipped_examples() -> Iterator[Specimen]:
    """The river blob (``river.pkl``) the trainer writes for each shipped example config."""
    from river import datasets

    from services.learning.config import example_path, load_config, parse_config
    from services.learning.sink import InMemorySink
    from services.learning.store_sink import CheckpointerSink
    from services.learning.synthetic import examples_from
    from services.learning.trainer import OnlineTrainer

    every_detector = parse_config(
        {
            "model": [
                {
                    "name": "every-detector",
                    "kind": "river",
                    "factory": {"path": "river.linear_model.LogisticRegression"},
                    "metrics": {"names": ["accuracy", "log_loss", "cross_entropy"]},
                    "drift": [
                        {"kind": "ADWIN"},
                        {"kind": "PageHinkley", "params": {"mode": "up"}},
                        {"kind": "KSWIN"},
                        *({"kind": k} for k in ("DDM", "EDDM", "HDDM_A", "HDDM_W", "FHDDM")),
                    ],
                }
            ]
        }
    )
    configs = [
        *(load_config(example_path(e)) for e in ("river_logreg", "torch_fm")),
        every_detector,
    ]
    for learning in configs:
        for config in learning.models:
            sink = InMemorySink()
            trainer = OnlineTrainer(config, sink)
            data = examples_from(datasets.Phishing(), config.name, limit=LEARN)
            for offset, ex in enumerate(data):
                trainer.process(ex, topic="t", partition=0, offset=offset)
            trainer.checkpoint("manual")
            state = CheckpointerSink._capture(sink.snapshots[-1])
            objects = pickle.loads(next(iter(state.blobs.values())))
            yield Specimen(f"example:{config.name}", objects, _probe_trainer_objects)


def _probe_trainer_objects(objects: dict[str, Any]) -> Any:
    out: list[Any] = [objects["metrics"]["count"]]
    out += [m.get() for m in objects["metrics"]["total"].values()]
    out += [m.get() for m in objects["metrics"]["rolling"].values()]
    for d in objects["drift"]["detectors"]:
        for i in range(50):
            d.update(float(i % 3 == 0))
        out.append(d.drift_detected)
    if "model" in objects:
        rows = _rows(7, 20)
        out += [objects["model"].predict_proba_one(_numeric(x)) for x, _, _ in rows]
    return out


def corpus() -> list[Specimen]:
    """Every specimen, trained (deterministic: fixed seeds)."""
    return [*_shipped_examples(), *_learned_estimators(), *_metrics(), *_detectors()]


class RecordingUnpickler(pickle._Unpickler):
    """The pure-Python unpickler, recording each global, getattr and REDUCE call it makes."""

    stack: list[Any]

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.globals: set[tuple[str, str]] = set()
        self.methods: set[tuple[str, str, str]] = set()
        self.called: set[tuple[str, str]] = set()
        self._names: dict[int, tuple[str, str]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("builtins", "getattr"):
            return self._getattr
        self.globals.add((module, name))
        obj = super().find_class(module, name)
        self._names[id(obj)] = (module, name)
        return obj

    def _getattr(self, obj: Any, name: str) -> Any:
        cls = type(obj)
        self.methods.add((cls.__module__, cls.__qualname__, name))
        return getattr(obj, name)

    def load_reduce(self) -> None:
        func = self.stack[-2]
        if id(func) in self._names:
            self.called.add(self._names[id(func)])
        _BASE[pickle.REDUCE[0]](self)


_BASE = cast(dict[int, Callable[[Any], None]], pickle._Unpickler.dispatch)
RecordingUnpickler.dispatch = cast(Any, {**_BASE, pickle.REDUCE[0]: RecordingUnpickler.load_reduce})


@dataclass
class Recorded:
    """What the corpus's pickles name: globals, the globals they call, bound methods."""

    globals: set[tuple[str, str]]
    callables: set[tuple[str, str]]
    methods: set[tuple[str, str, str]]


def record(specimens: list[Specimen]) -> Recorded:
    """The globals, called functions and bound methods the specimens' pickles use."""
    out = Recorded(set(), set(), set())
    for specimen in specimens:
        unpickler = RecordingUnpickler(pickle.dumps({"x": specimen.obj}, protocol=5))
        unpickler.load()
        out.globals |= unpickler.globals
        out.callables |= unpickler.called
        out.methods |= unpickler.methods
    return out


def _literal(name: str, kind: str, items: set[Any]) -> str:
    lines = [f"{name}: frozenset[{kind}] = frozenset(", "    {"]
    lines += [f"        {item!r},".replace("'", '"') for item in sorted(items)]
    return "\n".join([*lines, "    }", ")"])


def main() -> None:
    """Print the allow-list literals for :mod:`.safe_pickle`."""
    seen = record(corpus())
    builtins.print(_literal("ALLOWED_GLOBALS", "tuple[str, str]", seen.globals))
    builtins.print(_literal("CALLABLE_GLOBALS", "tuple[str, str]", seen.callables))
    builtins.print(_literal("ALLOWED_METHODS", "tuple[str, str, str]", seen.methods))


if __name__ == "__main__":
    main()
