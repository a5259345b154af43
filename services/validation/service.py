"""The validation facade the gateway agent calls: holdout buffers, the gateway, the guard.

:class:`Validation` owns, per configured model, one
:class:`~services.validation.holdout.HoldoutBuffer`, one
:class:`~services.validation.gateway.Gateway` and one
:class:`~services.validation.guard.Guard`, and routes the agent's calls to
them. It does no I/O of its own beyond the evaluator and the pointer it is
given, and is not thread-safe: the agent calls it from one executor thread.

When the agent calls it
-----------------------
- :meth:`Validation.on_example` for each record of ``training-examples``: a
  running canary counts it (every example: canary-route ones of the canary,
  live-route ones of the live version; :mod:`services.validation.canary`);
  a live-route answer with feedback feeds the guard's detector, when one is
  configured (:meth:`Guard.on_served`); an example whose request is in the
  model's holdout share goes into its buffer; the guard and then the gateway
  judge if that completed a sample.
- :meth:`Validation.on_checkpoint` for each record of ``checkpoint-events``.
- :meth:`Validation.on_shadow_score` for each record of ``shadow-scores``
  (repeats dropped by the agent): a running shadow stage counts it
  (:mod:`services.validation.shadow`).
- :meth:`Validation.tick` about every second: reads each model's pointer to
  notice changes made by others (an operator's promote or rollback: the
  guard starts watching the new live), ends cooldowns, and retries what
  failed for a transient reason (Redis unavailable).

Each returns the verdicts made, for the agent to publish on ``verdicts``.
At start, :meth:`Validation.remember` takes what ``version-events`` says the
guard rolled back (:func:`rolled_back_by_guard`), so a restarted gateway does
not promote again a version its guard rolled back before.
Events of models not configured are ignored (and counted). The live version
found at the first read of a model's pointer is not watched by the guard:
when it was promoted, and so which examples came after it, is unknown.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from schemas.errors import SHUTDOWN_EXCEPTIONS, ConfigError, SchemaError
from schemas.events import (
    CheckpointEvent,
    ShadowScore,
    TrainingExample,
    Verdict,
    VersionEvent,
)
from services.learning.config import ModelConfig
from services.pointer.base import PointerState, VersionPointer
from services.validation.base import HoldoutExample, VersionEvaluator, is_held_out
from services.validation.gateway import Gateway
from services.validation.guard import Guard
from services.validation.holdout import HoldoutBuffer
from services.validation.judging import Outcome
from services.validation.live_metrics import LabelRule, label_rule, score_served

log = logging.getLogger(__name__)

#: Names of unconfigured models counted one by one (the rest only in the total).
MAX_IGNORED_NAMES = 100


@dataclass
class _Model:
    config: ModelConfig
    buffer: HoldoutBuffer
    guard: Guard
    gateway: Gateway
    known: PointerState | None = None  # the pointer as last read or changed here
    read: bool = False  # the pointer was read or changed here at least once
    pointer_error: str | None = None  # the last tick's read failure
    rule: LabelRule | None = None  # how labels become targets, when the guard scores answers
    examples: int = 0
    unscorable: int = 0  # live answers the guard's detector could not score
    shadow_scores: int = 0
    duplicates: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)


class Validation:
    """The gateway and the guard of every configured model (module docstring).

    Parameters
    ----------
    models
        Model name -> configuration (the key must be the configuration's name).
    evaluator
        Scores versions (read-only).
    pointer
        The version pointer the gateway promotes and the guard rolls back through.
    clock
        Monotonic seconds (cooldowns).
    """

    def __init__(
        self,
        models: Mapping[str, ModelConfig],
        evaluator: VersionEvaluator,
        pointer: VersionPointer,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.evaluator = evaluator
        self.pointer = pointer
        self.clock = clock
        self._models: dict[str, _Model] = {}
        for name, config in models.items():
            if name != config.name:
                raise ConfigError(
                    "the validation's models must be keyed by their names",
                    key=name,
                    model=config.name,
                )
            buffer = HoldoutBuffer(config.promotion.holdout_size)
            watching = config.guard.enabled and config.guard.detector is not None
            rule = label_rule(config) if watching else None
            task = rule.task if rule is not None else None
            guard = Guard(config, buffer, evaluator, pointer, clock, task=task)
            gateway = Gateway(
                config, buffer, evaluator, pointer, guard.rolled_back, unsettled=guard.unjudged
            )
            self._models[name] = _Model(config, buffer, guard, gateway, rule=rule)
        self.ignored_total = 0
        self.ignored: Counter[str] = Counter()

    def on_example(self, example: TrainingExample) -> list[Verdict]:
        """Count ``example`` for a running canary, keep it if it is held out; verdicts of
        judgements it completed."""
        m = self._model(example.model)
        if m is None:
            return []
        m.examples += 1
        verdicts = self._absorb(m, m.gateway.on_attributed(example), "gateway")
        verdicts += self._served(m, example)
        if not is_held_out(example.request_id, m.config.promotion.holdout_percent):
            return verdicts
        if not m.buffer.add(HoldoutExample.of(example)):
            m.duplicates += 1
            return verdicts
        verdicts += self._absorb(m, m.guard.on_example(), "guard")
        verdicts += self._absorb(m, m.gateway.on_example(), "gateway")
        return verdicts

    def remember(self, rolled_back: Mapping[str, Iterable[str]]) -> None:
        """Versions rolled back by a guard before this process started (by model): never
        promoted by the gateway (:func:`rolled_back_by_guard`). Other models are ignored."""
        for name, versions in rolled_back.items():
            m = self._models.get(name)
            if m is not None:
                m.guard.rolled_back.update(versions)

    def on_shadow_score(self, score: ShadowScore) -> list[Verdict]:
        """Count ``score`` for a running shadow stage; verdicts of the judgement it completed."""
        m = self._model(score.model)
        if m is None:
            return []
        m.shadow_scores += 1
        return self._absorb(m, m.gateway.on_shadow_score(score), "gateway")

    def on_checkpoint(self, event: CheckpointEvent) -> list[Verdict]:
        """A candidate: judged now, or when enough held-out examples came."""
        m = self._model(event.model)
        if m is None:
            return []
        return self._absorb(m, m.gateway.offer(event), "gateway")

    def tick(self) -> list[Verdict]:
        """Notice pointer changes by others, end cooldowns, retry transient failures."""
        verdicts: list[Verdict] = []
        for m in self._models.values():
            self._observe(m)
            verdicts += self._absorb(m, m.guard.tick(), "guard")
            verdicts += self._absorb(m, m.gateway.retry(), "gateway")
        return verdicts

    def describe(self) -> dict[str, Any]:
        """JSON-able state of every model, for logs and status."""
        models: dict[str, Any] = {}
        for name, m in self._models.items():
            models[name] = {
                "live": m.known.live if m.known is not None else None,
                "epoch": m.known.epoch if m.known is not None else None,
                "pointer_error": m.pointer_error,
                "policy": m.config.promotion.mode,
                "holdout": {
                    "size": len(m.buffer),
                    "capacity": m.buffer.size,
                    "added": m.buffer.added,
                    "examples_seen": m.examples,
                    "shadow_scores_seen": m.shadow_scores,
                    "duplicates": m.duplicates,
                },
                "unscorable_answers": m.unscorable,
                "pending": m.gateway.describe(),
                "canary": m.gateway.canary.describe(),
                "shadow": m.gateway.shadow.describe(),
                "guard": m.guard.describe(),
                "rolled_back": sorted(m.guard.rolled_back),
                "verdicts": dict(m.verdicts),
            }
        return {
            "models": models,
            "ignored": {"events": self.ignored_total, "models": dict(self.ignored)},
        }

    # -- internals ---------------------------------------------------------

    def _served(self, m: _Model, example: TrainingExample) -> list[Verdict]:
        """Feed a live-route answer with feedback to the guard's detector (if any)."""
        if m.rule is None or example.route not in (None, "live"):
            return []
        if example.label_is_default or example.prediction is None:
            return []
        try:
            score = score_served(m.rule, example)
        except SchemaError:
            m.unscorable += 1
            return []
        return self._absorb(m, m.guard.on_served(example.model_version, score), "guard")

    def _model(self, name: str) -> _Model | None:
        m = self._models.get(name)
        if m is None:
            self.ignored_total += 1
            if name in self.ignored or len(self.ignored) < MAX_IGNORED_NAMES:
                self.ignored[name] += 1
        return m

    def _observe(self, m: _Model) -> None:
        """Read the pointer; a live version changed by someone else starts a guard watch."""
        name = m.config.name
        try:
            state = self.pointer.get(name)
        except SHUTDOWN_EXCEPTIONS:
            raise
        except BaseException as exc:  # noqa: BLE001 - retried next tick; judges log their own
            if m.pointer_error is None:
                log.warning("cannot read the pointer of %s (retried each tick): %r", name, exc)
            m.pointer_error = repr(exc)
            return
        m.pointer_error = None
        if not m.read:
            m.read, m.known = True, state
            m.guard.seen_live = state.live if state is not None else None
            if state is not None and state.live is not None:
                m.guard.note = (
                    f"{state.live} was live when validation started: not watched"
                    " (when it was promoted is unknown)"
                )
            return
        if state is None:
            return  # no pointer yet, or Redis lost it: nothing changed that a judge can use
        if m.known is None or state.live != m.known.live:
            log.info(
                "%s: live is %s at epoch %d (changed by someone else)",
                name,
                state.live,
                state.epoch,
            )
            m.guard.on_live(state, f"a change noticed at epoch {state.epoch}")
        m.known = state

    def _absorb(self, m: _Model, out: Outcome, judge: Literal["gateway", "guard"]) -> list[Verdict]:
        """Record an outcome's pointer changes and verdicts; a promotion starts a watch
        (setting or clearing a canary or a shadow leaves live as it was: no watch)."""
        promoted = {v.version for v in out.verdicts if v.decision == "promote"}
        for state in out.changes:
            before = m.known.live if m.known is not None else None
            m.read, m.known = True, state
            if judge == "guard":  # the guard's own rollback: seen, not watched
                m.guard.seen_live = state.live
            elif state.live in promoted:
                m.guard.on_live(state, f"the gateway's promotion at epoch {state.epoch}")
            elif state.live != before:
                # the gateway set or cleared a canary on a pointer whose live
                # version someone else had changed: a change the guard must watch
                m.guard.on_live(state, f"a change noticed at epoch {state.epoch}")
        for verdict in out.verdicts:
            m.verdicts[verdict.decision] += 1
            log.info(
                "%s %s %s of %s: %s",
                verdict.judge,
                verdict.decision,
                verdict.version,
                verdict.model,
                verdict.reason,
            )
        if out.changes or out.verdicts:
            self._forget(m)
        return out.verdicts

    def _forget(self, m: _Model) -> None:
        """Let the evaluator drop versions no judge of this model needs any more."""
        keep: list[str | None] = []
        if m.known is not None:
            keep += [m.known.live, m.known.previous, m.known.canary, m.known.shadow]
        if m.gateway.pending is not None:
            keep.append(m.gateway.pending.version)
        for stage in (m.gateway.canary, m.gateway.shadow):
            if stage.run is not None:
                keep += [stage.run.version, stage.run.live]
        if m.guard.watch is not None:
            keep += [m.guard.watch.live, m.guard.watch.replaced]
        try:
            self.evaluator.forget(m.config.name, tuple(dict.fromkeys(v for v in keep if v)))
        except SHUTDOWN_EXCEPTIONS:
            raise
        except BaseException:  # memory housekeeping never stops a judgement
            log.exception("the evaluator failed to forget versions of %s", m.config.name)


def rolled_back_by_guard(events: Iterable[VersionEvent]) -> dict[str, set[str]]:
    """Per model, the versions a guard rolled back and no one but the gateway has made
    live since (an operator's promote or rollback to a version lifts the bar; the
    gateway's own cannot happen for such a version), from the pointer's log, in epoch
    order."""
    out: dict[str, set[str]] = {}
    for event in sorted(events, key=lambda e: (e.model, e.epoch)):
        versions = out.setdefault(event.model, set())
        by_operator = event.actor not in ("gateway", "guard")
        if event.action == "rollback" and event.actor == "guard" and event.from_live:
            versions.add(event.from_live)
        elif by_operator and event.live and event.action in ("promote", "rollback"):
            versions.discard(event.live)  # an operator made it live
    return {model: versions for model, versions in out.items() if versions}
