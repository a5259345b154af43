"""Build objects from dotted paths named in configuration, safely.

A model configuration names its factory by dotted path
(``river.linear_model.LogisticRegression``) with keyword parameters. Importing
an arbitrary dotted path is code execution, so only paths under an allow-listed
set of module prefixes are resolved: :data:`DEFAULT_ALLOWED_PREFIXES` unless a
configuration explicitly widens the list.

A parameter value that is itself a table with a ``factory`` key is built
recursively (same allow-list), so nested objects such as river optimizers can
be configured::

    [model.factory]
    path = "river.linear_model.LogisticRegression"
    params = { optimizer = { factory = "river.optim.SGD", params = { lr = 0.05 } } }

Examples
--------
>>> build("river.linear_model.LogisticRegression", {}).__class__.__name__
'LogisticRegression'
>>> resolve("os.system")
Traceback (most recent call last):
...
schemas.errors.ConfigError: factory path outside the allowed module prefixes (path=os.system, ...
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

from schemas.errors import ConfigError

#: Module prefixes a factory path may start with unless a config widens the list.
DEFAULT_ALLOWED_PREFIXES: tuple[str, ...] = ("river.", "torch.", "services.learning.")


def is_allowed(path: str, allowed: Sequence[str] = DEFAULT_ALLOWED_PREFIXES) -> bool:
    """Whether ``path`` lies under one of the ``allowed`` module prefixes.

    A prefix ending in ``.`` matches whole leading segments only, so
    ``river.`` admits ``river.linear_model.X`` but not ``riverbank.X``.
    Private segments (starting with ``_``) are never admitted.
    """
    if any(part.startswith("_") or not part.isidentifier() for part in path.split(".")):
        return False
    for prefix in allowed:
        stem = prefix if prefix.endswith(".") else prefix + "."
        if path.startswith(stem) and len(path) > len(stem):
            return True
    return False


def resolve(path: str, allowed: Sequence[str] = DEFAULT_ALLOWED_PREFIXES) -> Any:
    """Import the object named by ``path`` (``package.module.Name``).

    Raises
    ------
    ConfigError
        When the path is outside ``allowed``, or cannot be imported.
    """
    if not is_allowed(path, allowed):
        raise ConfigError(
            "factory path outside the allowed module prefixes", path=path, allowed=list(allowed)
        )
    parts = path.split(".")
    # Longest importable module prefix, then attribute lookups for the rest.
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            raise ConfigError("factory path names nothing importable", path=path) from None
        return obj
    raise ConfigError("factory path names nothing importable", path=path)


def build_value(value: Any, allowed: Sequence[str] = DEFAULT_ALLOWED_PREFIXES) -> Any:
    """Turn a config value into a constructor argument.

    Tables with a ``factory`` key become objects (recursively); lists and
    other tables are converted element-wise; scalars pass through.
    """
    if isinstance(value, Mapping):
        if "factory" in value:
            unknown = set(value) - {"factory", "params"}
            if unknown:
                raise ConfigError(
                    "nested factory table has unknown keys",
                    path=value["factory"],
                    keys=sorted(unknown),
                )
            return build(str(value["factory"]), value.get("params", {}), allowed)
        return {k: build_value(v, allowed) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [build_value(v, allowed) for v in value]
    return value


def build(
    path: str, params: Mapping[str, Any], allowed: Sequence[str] = DEFAULT_ALLOWED_PREFIXES
) -> Any:
    """Call the factory at ``path`` with ``params`` (nested factories built first).

    Raises
    ------
    ConfigError
        When the path is not allowed or the factory rejects the parameters.
    """
    factory = resolve(path, allowed)
    if not callable(factory):
        raise ConfigError("factory path names something that is not callable", path=path)
    kwargs = {k: build_value(v, allowed) for k, v in params.items()}
    try:
        return factory(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"factory rejected its parameters: {exc}", path=path) from exc


def pipeline(steps: Sequence[Any]) -> Any:
    """A river pipeline of already-built ``steps`` (``steps[0] | steps[1] | ...``).

    For configuration: ``factory = "services.learning.factory.pipeline"`` with
    ``params = { steps = [ {factory = ...}, {factory = ...} ] }``.
    """
    from river import compose

    if not steps:
        raise ConfigError("a pipeline needs at least one step")
    return compose.Pipeline(*steps)
