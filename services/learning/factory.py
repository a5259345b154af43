"""Build model objects from dotted paths named in configuration, safely by construction.

A model configuration names its factory by dotted path
(``river.linear_model.LogisticRegression``) with keyword parameters. A path
resolves to one of two things only, checked on the object it names, never on
its text:

- a **class** (``isinstance(obj, type)``) of one of the :data:`FAMILIES`:
  river estimators (classifiers, regressors, transformers, pipelines),
  drift detectors, optimizers, schedulers, initializers, losses, statistics
  and metrics; torch modules (``torch.nn``), optimizers and learning-rate
  schedulers. The class must derive from one of its family's bases, and its
  own ``__module__`` must lie in the family's packages and outside the
  excluded ones (river's datasets and streams, which read files and the
  network; evaluation, compatibility and check helpers; torch's parallel and
  utility modules);
- a **builder** registered in code with :func:`builder` (:func:`pipeline`
  here, the torch models of :mod:`services.learning.torch_models`).

Functions, modules, methods and instances are refused whatever their path,
and nothing a configuration file says widens these lists. Resolving imports
the module part of the path only (``river.linear_model``) and looks up one
attribute in it (``LogisticRegression``): ``torch.os.system`` names no
module ``torch.os``, so nothing is reached by walking attributes. Private
segments (``_name``) are refused; the text of the path is checked first only
to refuse early what cannot be admitted, before importing anything.

A parameter value that is itself a table with a ``factory`` key is built
recursively, under the same rules, so nested objects such as river
optimizers can be configured::

    [model.factory]
    path = "river.linear_model.LogisticRegression"
    params = { optimizer = { factory = "river.optim.SGD", params = { lr = 0.05 } } }

A river drift detector built this way gets the parameter bounds of
:mod:`services.learning.detector_params` (some bad values crash river's Rust
code). Whatever else a constructor raises, a pyo3 panic included, becomes a
:class:`~schemas.errors.ConfigError` naming the path.

Examples
--------
>>> build("river.linear_model.LogisticRegression", {}).__class__.__name__
'LogisticRegression'
>>> resolve("torch.os.system")
Traceback (most recent call last):
...
schemas.errors.ConfigError: factory path outside the admitted packages (path=torch.os.system, ...
>>> resolve("torch.nn.os.system")
Traceback (most recent call last):
...
schemas.errors.ConfigError: factory path names no importable module (path=torch.nn.os.system)
>>> resolve("river.datasets.Phishing")
Traceback (most recent call last):
...
schemas.errors.ConfigError: factory path lies in a package that is never admitted (...
"""

from __future__ import annotations

import asyncio
import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from schemas.errors import ConfigError
from services.lazy_modules import loaded
from services.learning.detector_params import DETECTOR_CLASSES, check_detector_params

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Family:
    """The classes one library may contribute to a model configuration.

    Attributes
    ----------
    name
        The library (``river``, ``torch``).
    packages
        Dotted module prefixes (whole segments) a path and the class's own
        ``__module__`` must lie under.
    excluded
        Module prefixes never admitted, even for a class of an admitted base.
    bases
        ``"module:Name"`` of the base classes; a class must derive from one.
    """

    name: str
    packages: tuple[str, ...]
    excluded: tuple[str, ...]
    bases: tuple[str, ...]


RIVER = Family(
    name="river",
    packages=("river",),
    excluded=(
        "river.api",
        "river.bandit.datasets",
        "river.checks",
        "river.compat",
        "river.datasets",
        "river.drift.datasets",
        "river.evaluate",
        "river.stream",
        "river.utils",
    ),
    bases=(
        "river.base:Estimator",
        "river.base:DriftDetector",
        "river.base:BinaryDriftDetector",
        "river.optim.base:Optimizer",
        "river.optim.base:Scheduler",
        "river.optim.base:Initializer",
        "river.optim.base:Loss",
        "river.stats.base:Statistic",
        "river.metrics.base:Metric",
    ),
)

TORCH = Family(
    name="torch",
    packages=("torch.nn", "torch.optim"),
    excluded=("torch.nn.parallel", "torch.nn.utils", "torch.nn.backends"),
    bases=(
        "torch.nn:Module",
        "torch.optim:Optimizer",
        "torch.optim.lr_scheduler:LRScheduler",
    ),
)

#: Every family a factory class may come from. Code, not configuration.
FAMILIES: tuple[Family, ...] = (RIVER, TORCH)

#: Modules that register builders when imported (the only other modules imported).
BUILDER_MODULES: tuple[str, ...] = ("services.learning.factory", "services.learning.torch_models")

_BUILDERS: dict[str, Callable[..., Any]] = {}

#: BaseExceptions that mean "stop", never "this constructor failed".
_STOP = (KeyboardInterrupt, SystemExit, GeneratorExit, asyncio.CancelledError)


def _under(module: str, prefixes: Sequence[str]) -> bool:
    """Whether ``module`` is one of ``prefixes`` or lies inside one (whole segments)."""
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _qualified(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"


def builder(func: F) -> F:
    """Register ``func`` (a function or class of a :data:`BUILDER_MODULES` module)
    as a factory a configuration may name by its own ``module.qualname``."""
    if func.__module__ not in BUILDER_MODULES:
        raise ConfigError("builders live in the builder modules", path=_qualified(func))
    _BUILDERS[_qualified(func)] = func
    return func


def registered_builders() -> list[str]:
    """Paths of the builders registered so far (after importing :data:`BUILDER_MODULES`)."""
    for name in BUILDER_MODULES:
        importlib.import_module(name)
    return sorted(_BUILDERS)


def _family_of(path: str) -> Family | None:
    for family in FAMILIES:
        if _under(path, family.packages):
            return family
    return None


def _base_classes(family: Family) -> tuple[type, ...]:
    bases = []
    for spec in family.bases:
        module_name, name = spec.split(":")
        bases.append(getattr(importlib.import_module(module_name), name))
    return tuple(bases)


def _check_text(path: str) -> tuple[str, str, Family | None]:
    """Early filter on the text: refuse what cannot resolve to an admitted object."""
    parts = path.split(".")
    if len(parts) < 2 or any(not p.isidentifier() or p.startswith("_") for p in parts):
        raise ConfigError("factory path must be dotted names without private segments", path=path)
    module_name, attr = path.rsplit(".", 1)
    if module_name in BUILDER_MODULES:
        return module_name, attr, None
    family = _family_of(module_name)
    if family is None:
        raise ConfigError(
            "factory path outside the admitted packages",
            path=path,
            packages=[p for f in FAMILIES for p in f.packages] + list(BUILDER_MODULES),
        )
    if _under(module_name, family.excluded):
        raise ConfigError(
            "factory path lies in a package that is never admitted",
            path=path,
            excluded=list(family.excluded),
        )
    return module_name, attr, family


def _check_class(path: str, obj: Any) -> None:
    """The object a path resolved to must be a class of an admitted family and base."""
    if not isinstance(obj, type):
        raise ConfigError(
            f"factory path names a {type(obj).__name__}, not a class or a registered builder",
            path=path,
        )
    own = obj.__module__
    family = _family_of(own)
    if family is None or _under(own, family.excluded):
        raise ConfigError("factory class is defined outside the admitted packages", path=path)
    if any(p.startswith("_") for p in own.split(".") + obj.__qualname__.split(".")):
        raise ConfigError("factory class is private", path=path, defined_in=own)
    bases = _base_classes(family)
    if not issubclass(obj, bases):
        raise ConfigError(
            f"factory class derives from none of the admitted {family.name} bases",
            path=path,
            bases=list(family.bases),
        )


def resolve(path: str) -> Any:
    """The class or registered builder named by ``path`` (``package.module.Name``).

    Raises
    ------
    ConfigError
        When the path names anything else, or nothing importable.
    """
    if not isinstance(path, str):
        raise ConfigError("factory path must be a string", path=repr(path))
    module_name, attr, family = _check_text(path)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        raise ConfigError("factory path names no importable module", path=path) from None
    except Exception as exc:
        raise ConfigError(f"factory module failed to import: {exc}", path=path) from exc
    obj = vars(loaded(module)).get(attr)  # a deferred module runs first
    if obj is None:
        raise ConfigError("factory path names nothing in its module", path=path)
    if _BUILDERS.get(_qualified(obj)) is obj:
        return obj
    if family is None:
        raise ConfigError("factory path names no registered builder", path=path)
    _check_class(path, obj)
    return obj


def _factory_table(value: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]] | None:
    """``(path, params)`` of a nested ``{factory = ..., params = ...}`` table, else None."""
    if "factory" not in value:
        return None
    path = value["factory"]
    unknown = set(value) - {"factory", "params"}
    if unknown:
        raise ConfigError(
            "nested factory table has unknown keys", path=str(path), keys=sorted(unknown)
        )
    params = value.get("params", {})
    if not isinstance(params, Mapping):
        raise ConfigError("nested factory params must be a table", path=str(path))
    return path, params


def build_value(value: Any) -> Any:
    """Turn a config value into a constructor argument.

    Tables with a ``factory`` key become objects (recursively, same rules);
    lists and other tables are converted element-wise; scalars pass through.
    """
    if isinstance(value, Mapping):
        table = _factory_table(value)
        if table is not None:
            return build(*table)
        return {k: build_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [build_value(v) for v in value]
    return value


def check_value(value: Any) -> None:
    """Resolve every nested factory in ``value`` (as :func:`build_value` would), build nothing.

    Floats must be finite: a ``nan`` learning rate or threshold trains nothing, silently.
    """
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"factory parameter {value!r} is not a finite number")
    if isinstance(value, Mapping):
        table = _factory_table(value)
        if table is not None:
            check(*table)
            return
        for v in value.values():
            check_value(v)
    elif isinstance(value, list | tuple):
        for v in value:
            check_value(v)


def check(path: str, params: Mapping[str, Any]) -> None:
    """Resolve ``path`` and every nested factory of ``params``; build nothing.

    Raises
    ------
    ConfigError
        When any of them is not admitted (see the module docstring).
    """
    factory = resolve(path)
    kind = DETECTOR_CLASSES.get(_qualified(factory))
    if kind is not None:
        check_detector_params(kind, params)
    for name, v in params.items():
        try:
            check_value(v)
        except ConfigError as exc:
            if "param" in exc.context:
                raise
            raise ConfigError(exc.message, **{**exc.context, "param": f"{path}.{name}"}) from exc


def call(factory: Any, path: str, *args: Any, **kwargs: Any) -> Any:
    """Call a resolved ``factory``; whatever it raises becomes a ConfigError.

    pyo3 panics (river's Rust code) are ``BaseException``s; they are caught
    too, while ``KeyboardInterrupt``, ``SystemExit`` and cancellation propagate.
    """
    try:
        return factory(*args, **kwargs)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"factory rejected its parameters: {type(exc).__name__}: {exc}", path=path
        ) from exc
    except _STOP:
        raise
    except BaseException as exc:  # a pyo3 PanicException
        raise ConfigError(f"factory failed: {type(exc).__name__}: {exc}", path=path) from exc


def build(path: str, params: Mapping[str, Any]) -> Any:
    """Call the factory at ``path`` with ``params`` (nested factories built first).

    Raises
    ------
    ConfigError
        When the path is not admitted or the factory rejects the parameters.
    """
    factory = resolve(path)
    kind = DETECTOR_CLASSES.get(_qualified(factory))
    if kind is not None:
        check_detector_params(kind, params)
    kwargs = {str(k): build_value(v) for k, v in params.items()}
    return call(factory, path, **kwargs)


@builder
def pipeline(steps: Sequence[Any]) -> Any:
    """A river pipeline of already-built ``steps`` (``steps[0] | steps[1] | ...``).

    For configuration: ``factory = "services.learning.factory.pipeline"`` with
    ``params = { steps = [ {factory = ...}, {factory = ...} ] }``.
    """
    from river import base, compose

    if not steps:
        raise ConfigError("a pipeline needs at least one step")
    for step in steps:
        if not isinstance(step, base.Estimator):
            raise ConfigError(
                f"a pipeline step must be a river estimator, not {type(step).__name__}"
            )
    return compose.Pipeline(*steps)
