"""Retention from the model configuration: ``{policy, params}`` data -> store policies.

A model's ``[model.retention]`` table lists policies by the checkpoint
store's names; :func:`build_policy` turns one model's list into a
:class:`~services.checkpoints.retention.RetentionPolicy` and
:func:`build_retention` the whole file into one policy for the store, which
dispatches on the model name (the store runs GC per model). Models without a
retention table, and models the file does not name, keep the store's own
``DRIFTLOOP_STORE_*`` retention.

Names and parameters::

    latest_n    n                      the n newest
    best_n      n, metric, mode        the n best by metric (mode min|max; default
                                       max for accuracy, min for losses and errors)
    one_per     interval_s             the first of every interval_s-second window
    newer_than  max_age_s              everything younger than max_age_s
    pinned                             milestones (always kept anyway)

Pinned checkpoints and, given a reference source, whatever the version
pointer references are kept for every model whatever its table says.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from schemas.errors import ConfigError
from services.checkpoints.catalog import CheckpointRecord
from services.checkpoints.config import StoreConfig
from services.checkpoints.retention import (
    KeepAny,
    KeepBest,
    KeepLatest,
    KeepNewerThan,
    KeepOnePer,
    KeepPinned,
    KeepReferenced,
    ReferenceSource,
    RetentionPolicy,
    best_mode,
    policy_from_config,
)
from services.learning.config import LearningConfig, PolicyConfig, RetentionConfig


def _best(params: Mapping[str, Any]) -> RetentionPolicy:
    metric = str(params["metric"])
    mode = params.get("mode") or best_mode(metric)
    if mode == "min":
        return KeepBest(int(params["n"]), metric, "min")
    if mode == "max":
        return KeepBest(int(params["n"]), metric, "max")
    raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")


_BUILDERS: dict[str, Callable[[Mapping[str, Any]], RetentionPolicy]] = {
    "latest_n": lambda p: KeepLatest(int(p["n"])),
    "best_n": _best,
    "one_per": lambda p: KeepOnePer(float(p["interval_s"])),
    "newer_than": lambda p: KeepNewerThan(float(p["max_age_s"])),
    "pinned": lambda p: KeepPinned(),
}

#: Parameters each policy accepts.
_PARAMS: dict[str, frozenset[str]] = {
    "latest_n": frozenset({"n"}),
    "best_n": frozenset({"n", "metric", "mode"}),
    "one_per": frozenset({"interval_s"}),
    "newer_than": frozenset({"max_age_s"}),
    "pinned": frozenset(),
}


def policy_of(entry: PolicyConfig, *, model: str | None = None) -> RetentionPolicy:
    """The store policy one ``{policy, params}`` entry names.

    Raises
    ------
    ConfigError
        Unknown policy name, unknown or missing parameter, or a bad value.
    """
    builder = _BUILDERS.get(entry.policy)
    if builder is None:
        raise ConfigError(
            f"unknown retention policy {entry.policy!r}; known: {sorted(_BUILDERS)}",
            model=model,
        )
    unknown = set(entry.params) - _PARAMS[entry.policy]
    if unknown:
        raise ConfigError(
            f"retention policy {entry.policy!r} takes {sorted(_PARAMS[entry.policy])},"
            f" not {sorted(unknown)}",
            model=model,
        )
    try:
        policy = builder(entry.params)
    except KeyError as exc:
        raise ConfigError(
            f"retention policy {entry.policy!r} needs parameter {exc.args[0]!r}", model=model
        ) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"retention policy {entry.policy!r}: bad parameter: {exc}", model=model
        ) from None
    if isinstance(policy, KeepLatest | KeepBest) and policy.n < 1:
        raise ConfigError(f"retention policy {entry.policy!r} needs n >= 1", model=model)
    return policy


def build_policy(
    config: RetentionConfig,
    *,
    model: str | None = None,
    references: ReferenceSource | None = None,
    rollback_depth: int = 3,
) -> RetentionPolicy | None:
    """One model's retention: its policies plus pins (and references); None if it lists none."""
    if not config.policies:
        return None
    policies = [policy_of(entry, model=model) for entry in config.policies]
    policies.append(KeepPinned())
    if references is not None:
        policies.append(KeepReferenced(references, rollback_depth))
    return KeepAny(*policies)


@dataclass(frozen=True)
class PerModelRetention:
    """A :class:`RetentionPolicy` that applies each model's own policy, else ``default``."""

    by_model: Mapping[str, RetentionPolicy]
    default: RetentionPolicy

    def keep(
        self, model: str, checkpoints: Sequence[CheckpointRecord], now_ms: int
    ) -> dict[str, str]:
        policy = self.by_model.get(model, self.default)
        return policy.keep(model, checkpoints, now_ms)


def build_retention(
    learning: LearningConfig,
    store: StoreConfig,
    references: ReferenceSource | None = None,
) -> PerModelRetention:
    """The store's retention policy for every model of ``learning``.

    Pass it as ``CheckpointStore(store, retention=...)``. Raises
    :class:`ConfigError` naming the model whose table is wrong.
    """
    by_model: dict[str, RetentionPolicy] = {}
    for model in learning.models:
        policy = build_policy(
            model.retention,
            model=model.name,
            references=references,
            rollback_depth=store.rollback_depth,
        )
        if policy is not None:
            by_model[model.name] = policy
    return PerModelRetention(by_model, policy_from_config(store, references))
