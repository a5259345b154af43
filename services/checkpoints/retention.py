"""Retention policies: each keeps what it names; GC deletes what none keeps.

A :class:`RetentionPolicy` looks at the committed checkpoints of one model
and returns the versions it keeps, each with a reason that ``driftloop
checkpoints gc --dry-run`` prints. Policies compose with :class:`KeepAny`.
GC adds two rules no policy can switch off: the newest checkpoint is kept,
and so is everything a kept checkpoint depends on (see :mod:`.gc`).

Example::

    policy = KeepAny(KeepLatest(5), KeepBest(3, "logloss", "min"), KeepPinned(),
                     KeepReferenced(pointer, history_depth=3))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from services.checkpoints.catalog import CheckpointRecord
from services.checkpoints.config import StoreConfig


class RetentionPolicy(Protocol):
    """Decides which checkpoints of one model to keep.

    Called by GC (after each commit when configured, and by ``driftloop
    checkpoints gc``) with the committed checkpoints of ``model``, oldest
    first. Returns ``{version: reason}`` for each kept version. An exception
    aborts that GC run before anything is deleted.
    """

    def keep(
        self, model: str, checkpoints: Sequence[CheckpointRecord], now_ms: int
    ) -> dict[str, str]: ...


@dataclass(frozen=True)
class KeepLatest:
    """Keeps the ``n`` newest checkpoints."""

    n: int

    def keep(
        self, model: str, checkpoints: Sequence[CheckpointRecord], now_ms: int
    ) -> dict[str, str]:
        newest = sorted(checkpoints, key=lambda c: c.seq)[-self.n :] if self.n > 0 else []
        return {c.version: f"latest {self.n}" for c in newest}


#: Metrics where larger is better; every other metric driftloop reports
#: (log_loss, cross_entropy, mae, rmse) is a loss or an error.
MAXIMISED_METRICS: frozenset[str] = frozenset({"accuracy"})


def best_mode(metric: str) -> Literal["min", "max"]:
    """What "best" means for ``metric``: ``max`` for accuracy, ``min`` for the rest.

    The one rule behind a ``best_n`` retention without ``mode`` and
    ``driftloop checkpoints list --best-by`` without ``--mode``.
    """
    return "max" if metric in MAXIMISED_METRICS else "min"


@dataclass(frozen=True)
class KeepBest:
    """Keeps the ``n`` best checkpoints by ``metric`` (``mode`` min or max).

    Checkpoints without the metric are not ranked; ties go to the newer one.
    """

    n: int
    metric: str
    mode: Literal["min", "max"] = "min"

    def keep(
        self, model: str, checkpoints: Sequence[CheckpointRecord], now_ms: int
    ) -> dict[str, str]:
        ranked = [c for c in checkpoints if self.metric in c.metrics]
        sign = 1.0 if self.mode == "min" else -1.0
        ranked.sort(key=lambda c: (sign * c.metrics[self.metric], -c.seq))
        return {
            c.version: f"best {self.n} by {self.metric} ({self.mode})" for c in ranked[: self.n]
        }


@dataclass(frozen=True)
class KeepOnePer:
    """Thinning: keeps the first checkpoint of every ``interval_s``-second window.

    Windows are aligned to the epoch, so a newer checkpoint never displaces
    the one already kept for its window.
    """

    interval_s: float

    def keep(
        self, model: str, checkpoints: Sequence[CheckpointRecord], now_ms: int
    ) -> dict[str, str]:
        width = max(1, int(self.interval_s * 1000))
        first: dict[int, CheckpointRecord] = {}
        for c in sorted(checkpoints, key=lambda c: (c.created_ts, c.seq)):
            first.setdefault(c.created_ts // width, c)
        return {c.version: f"one per {self.interval_s:g}s" for c in first.values()}


@dataclass(frozen=True)
class KeepNewerThan:
    """Expiry: keeps checkpoints younger than ``max_age_s`` seconds."""

    max_age_s: float

    def keep(
        self, model: str, checkpoints: Sequence[CheckpointRecord], now_ms: int
    ) -> dict[str, str]:
        cutoff = now_ms - int(self.max_age_s * 1000)
        return {
            c.version: f"newer than {self.max_age_s:g}s"
            for c in checkpoints
            if c.created_ts > cutoff
        }


@dataclass(frozen=True)
class KeepPinned:
    """Keeps checkpoints carrying a milestone label (``driftloop checkpoints pin``)."""

    def keep(
        self, model: str, checkpoints: Sequence[CheckpointRecord], now_ms: int
    ) -> dict[str, str]:
        return {c.version: "pinned " + ",".join(c.pins) for c in checkpoints if c.pins}


@dataclass(frozen=True)
class VersionReferences:
    """What the version pointer of one model refers to.

    ``history`` holds the previously live versions, newest first (the
    rollback history).
    """

    live: str | None = None
    canary: str | None = None
    shadow: str | None = None
    history: tuple[str, ...] = ()


class ReferenceSource(Protocol):
    """Supplies the versions the version pointer references.

    Implemented by the version pointer (Redis) elsewhere; the store never
    imports it. Called by GC once per model per run; an exception aborts the
    run before anything is deleted (a pointer we cannot read must not let GC
    delete the live model).
    """

    def references(self, model: str) -> VersionReferences: ...


@dataclass
class InMemoryReferences:
    """A :class:`ReferenceSource` held in a dict (tests, single-process demos)."""

    by_model: dict[str, VersionReferences] = field(default_factory=dict)

    def references(self, model: str) -> VersionReferences:
        return self.by_model.get(model, VersionReferences())

    def set(self, model: str, refs: VersionReferences) -> None:
        self.by_model[model] = refs


@dataclass(frozen=True)
class KeepReferenced:
    """Keeps live, canary, shadow and the ``history_depth`` previous live versions."""

    source: ReferenceSource
    history_depth: int = 3

    def keep(
        self, model: str, checkpoints: Sequence[CheckpointRecord], now_ms: int
    ) -> dict[str, str]:
        refs = self.source.references(model)
        wanted: dict[str, str] = {}
        for i, version in enumerate(refs.history[: self.history_depth], start=1):
            wanted[version] = f"rollback history #{i}"
        for role in ("shadow", "canary", "live"):
            version = getattr(refs, role)
            if version is not None:
                wanted[version] = role
        present = {c.version for c in checkpoints}
        return {v: reason for v, reason in wanted.items() if v in present}


@dataclass(frozen=True, init=False)
class KeepAny:
    """Keeps whatever any of its policies keeps (reasons joined)."""

    policies: tuple[RetentionPolicy, ...]

    def __init__(self, *policies: RetentionPolicy) -> None:
        object.__setattr__(self, "policies", policies)

    def keep(
        self, model: str, checkpoints: Sequence[CheckpointRecord], now_ms: int
    ) -> dict[str, str]:
        kept: dict[str, str] = {}
        for policy in self.policies:
            for version, reason in policy.keep(model, checkpoints, now_ms).items():
                kept[version] = f"{kept[version]}; {reason}" if version in kept else reason
        return kept


def policy_from_config(
    config: StoreConfig, references: ReferenceSource | None = None
) -> RetentionPolicy:
    """The retention policy ``config`` describes; pins and references are always kept."""
    policies: list[RetentionPolicy] = [KeepLatest(config.keep_latest), KeepPinned()]
    if config.keep_best and config.best_metric:
        mode = config.best_mode or best_mode(config.best_metric)
        policies.append(KeepBest(config.keep_best, config.best_metric, mode))
    if config.keep_one_per_s is not None:
        policies.append(KeepOnePer(config.keep_one_per_s))
    if config.keep_newer_than_s is not None:
        policies.append(KeepNewerThan(config.keep_newer_than_s))
    if references is not None:
        policies.append(KeepReferenced(references, config.rollback_depth))
    return KeepAny(*policies)
