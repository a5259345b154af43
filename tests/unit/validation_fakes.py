"""Fakes for the unit tests of the validation gateway and guard (plain classes, no fixtures)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.events import (
    CheckpointEvent,
    Route,
    ShadowScore,
    TrainingExample,
    shadow_score_id,
    training_example_id,
)
from services.learning.config import ModelConfig, parse_config
from services.pointer.base import (
    PointerUnavailableError,
    StaleEpochError,
    VersionRefusedError,
)
from services.pointer.memory import InMemoryPointer
from services.validation.base import (
    CHECK_FINITE_PREDICTIONS,
    CHECK_FINITE_WEIGHTS,
    CHECK_LOADS,
    Evaluation,
    HoldoutExample,
    is_held_out,
)
from services.validation.service import Validation

M = "m"
CHECKS = (CHECK_LOADS, CHECK_FINITE_WEIGHTS, CHECK_FINITE_PREDICTIONS)


def config(
    *, promotion: dict[str, Any] | None = None, guard: dict[str, Any] | None = None
) -> ModelConfig:
    """A river classifier (metrics accuracy, log_loss) with the given policies."""
    data: dict[str, Any] = {
        "name": M,
        "kind": "river",
        "factory": {"path": "river.linear_model.LogisticRegression"},
        "promotion": {"mode": "auto", "min_examples": 10, "holdout_percent": 50.0}
        | (promotion or {}),
        "guard": {"enabled": True, "min_examples": 10, "watch_examples": 40, "cooldown_s": 30.0}
        | (guard or {}),
    }
    return parse_config({"model": [data]}).model(M)


class FakeEvaluator:
    """Scores a version by a table: version -> value, or the name of the check it fails.

    A version not in the table does not load. Every call is recorded as
    ``(version, request ids, metric)``. ``skipped`` examples of each call are
    said to be refused by the model (and not scored).
    """

    def __init__(self, table: dict[str, float | str] | None = None) -> None:
        self.table: dict[str, float | str] = dict(table or {})
        #: version -> each example's own loss by its request id; a version listed here gets
        #: per-example losses (Evaluation.losses), the others none.
        self.losses: dict[str, Callable[[str], float]] = {}
        self.calls: list[tuple[str, tuple[str, ...], str]] = []
        self.kept: list[tuple[str, ...]] = []
        self.skipped = 0

    def evaluate(
        self, model: str, version: str, examples: Sequence[HoldoutExample], metric: str
    ) -> Evaluation:
        ids = tuple(e.request_id for e in examples)
        self.calls.append((version, ids, metric))
        entry = self.table.get(version, CHECK_LOADS)
        if isinstance(entry, str):
            checks = {name: name != entry for name in CHECKS}
            return Evaluation(model, version, metric, None, 0, checks, error=f"{entry} is false")
        n = max(0, len(examples) - self.skipped)
        value = entry if n else None
        checks = dict.fromkeys(CHECKS, True)
        loss = self.losses.get(version)
        losses = None if loss is None else {i: loss(r) for i, r in enumerate(ids[:n])}
        return Evaluation(
            model, version, metric, value, n, checks, skipped=self.skipped, losses=losses
        )

    def forget(self, model: str, keep: Sequence[str] = ()) -> None:
        self.kept.append(tuple(keep))

    def scored(self, version: str) -> list[tuple[str, ...]]:
        """The request ids of each call that scored ``version``."""
        return [ids for v, ids, _ in self.calls if v == version]


@dataclass
class Clock:
    now: float = 1_000.0

    def __call__(self) -> float:
        return self.now


class Known:
    """A version check that accepts only the versions it was given."""

    def __init__(self, *versions: str) -> None:
        self.versions = set(versions)

    def check(self, model: str, version: str) -> None:
        if version not in self.versions:
            raise VersionRefusedError("not in the store", model=model, version=version)


class FlakyPointer(InMemoryPointer):
    """An in-memory pointer that plays a Redis outage and operators racing the judges.

    ``down``: every call raises PointerUnavailableError; ``changes_down``: every
    change does (reads still work). ``lost_reply``: the next
    change is applied, then raises PointerUnavailableError (the reply was lost).
    ``races``: before each change by ``gateway`` or ``guard``, an operator promotes
    the next version of the list (so the judge's ``expected_epoch`` is stale).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.down = False
        self.changes_down = False
        self.lost_reply = False
        self.races: list[str] = []
        self.stale_raised = 0

    def get(self, model: str) -> Any:
        if self.down:
            raise PointerUnavailableError("connection refused", model=model)
        return super().get(model)

    def promote(self, model: str, version: str, **kwargs: Any) -> Any:
        return self._flaky(super().promote, model, version, **kwargs)

    def rollback(self, model: str, **kwargs: Any) -> Any:
        return self._flaky(super().rollback, model, **kwargs)

    def set_canary(self, model: str, version: str | None, *args: Any, **kwargs: Any) -> Any:
        return self._flaky(super().set_canary, model, version, *args, **kwargs)

    def set_shadow(self, model: str, version: str | None, **kwargs: Any) -> Any:
        return self._flaky(super().set_shadow, model, version, **kwargs)

    def _flaky(self, change: Any, model: str, *args: Any, **kwargs: Any) -> Any:
        if self.down or self.changes_down:
            raise PointerUnavailableError("connection refused", model=model)
        if self.races and kwargs.get("actor") in ("gateway", "guard"):
            super().promote(model, self.races.pop(0), actor="operator", reason="by hand")
        try:
            event = change(model, *args, **kwargs)
        except StaleEpochError:
            self.stale_raised += 1
            raise
        if self.lost_reply:
            self.lost_reply = False
            raise PointerUnavailableError("timeout reading the reply", model=model)
        return event


@dataclass
class Feed:
    """Held-out training examples of model ``m``, numbered, for ``Validation.on_example``."""

    percent: float = 50.0
    sent: list[str] = field(default_factory=list)
    _ids: Iterator[str] | None = None

    def ids(self) -> Iterator[str]:
        i = 0
        while True:
            rid = f"req-{i}"
            i += 1
            if is_held_out(rid, self.percent):
                yield rid

    def next(self) -> TrainingExample:
        if self._ids is None:
            self._ids = self.ids()
        rid = next(self._ids)
        self.sent.append(rid)
        return example(rid)


def example(request_id: str, model: str = M) -> TrainingExample:
    return TrainingExample.new(
        example_id=training_example_id(request_id, None),
        request_id=request_id,
        model=model,
        model_version="v0",
        features={"x": 1.0},
        label=True,
        label_is_default=True,
        inference_event_id=f"inf-{request_id}",
        inference_ts=0,
        join_latency_ms=0,
    )


def served(
    request_id: str,
    version: str,
    route: str | None,
    *,
    right: bool,
    default: bool = False,
    logged: bool = True,
    model: str = M,
) -> TrainingExample:
    """An attributed example served by ``version`` on ``route`` whose logged prediction
    was ``right`` or wrong (label True); ``default``: no feedback came (the label is the
    joiner's default); ``logged`` False: no prediction was copied."""
    feedback = None if default else f"fb-{request_id}"
    return TrainingExample.new(
        example_id=training_example_id(request_id, feedback),
        request_id=request_id,
        model=model,
        model_version=version,
        features={"x": 1.0},
        label=True,
        label_is_default=default,
        feedback_event_id=feedback,
        feedback_ts=None if default else 0,
        inference_event_id=f"inf-{request_id}",
        inference_ts=0,
        join_latency_ms=0,
        route=route,
        prediction=right if logged else None,
    )


def shadowed(
    request_id: str,
    version: str,
    live: str,
    *,
    right: bool,
    live_right: bool,
    live_route: Route | None = "live",
    model: str = M,
) -> ShadowScore:
    """A shadow score of ``version``'s answer to a request ``live`` served on
    ``live_route``: each answer ``right`` or wrong (label True)."""
    return ShadowScore.new(
        event_id=shadow_score_id(request_id, f"shadow-{request_id}"),
        ts=0,
        request_id=request_id,
        example_id=training_example_id(request_id, f"fb-{request_id}"),
        model=model,
        model_version=version,
        shadow_event_id=f"shadow-{request_id}",
        prediction=right,
        label=True,
        live_version=live,
        live_route=live_route,
        live_event_id=f"inf-{request_id}",
        live_ts=0,
        live_prediction=live_right,
    )


def checkpoint(version: str, model: str = M) -> CheckpointEvent:
    return CheckpointEvent.new(
        model=model,
        version=version,
        step=1,
        examples_seen=1,
        trigger="count",
        location=f"/store/{model}/{version}",
        manifest_sha256="0" * 64,
    )


def feed(validation: Validation, source: Feed, n: int) -> list[Any]:
    """Send ``n`` held-out examples; every verdict they caused, in order."""
    out: list[Any] = []
    for _ in range(n):
        out += validation.on_example(source.next())
    return out
