"""Pointer changes as pure functions: the state before -> the state after and its event.

Both implementations (:mod:`.redis`, :mod:`.memory`) compute every change
with these functions and only differ in how they store the result, so they
cannot disagree on what a promote or a rollback does. No I/O here.

The rules
---------
- **promote** ``v``: ``v`` becomes live; the old live version goes to the
  front of the rollback history (``v`` leaves it, the history keeps at most
  ``depth`` versions); a canary or shadow equal to ``v`` is cleared.
- **rollback** (to ``previous``, or ``--to`` a version in the history): the
  target becomes live, and it and every version newer than it leave the
  history, as does the live version rolled back from — a rollback undoes the
  promotions since the target, so a second rollback goes further back, not
  forward again. (Rolled-back versions stay in the store only while their
  other retention keeps them; pin one to keep it.)
- **canary** ``v`` at ``p`` percent (0 < p <= 100), ``v`` not live; a live
  version must exist; a shadow equal to ``v`` is cleared (it moves from the
  shadow slot to the canary slot in one change). Clearing a canary that is
  not set is refused.
- **shadow** ``v``, ``v`` not live; a live version must exist. Clearing a
  shadow that is not set is refused.
- ``previous`` is always the newest history entry (None when the history is
  empty, e.g. with ``rollback_depth`` 0: then rollback is impossible).
- ``epoch`` is +1 on every change; a model's first change makes epoch 1.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import pydantic

from schemas.events import VersionAction, VersionEvent
from schemas.limits import CURRENT_SCHEMA_VERSION
from services.pointer.base import PointerError, PointerState


@dataclass(frozen=True)
class Change:
    """A pointer change computed but not yet stored."""

    before: PointerState | None
    after: PointerState
    event: VersionEvent


def event_id(model: str, epoch: int) -> str:
    """``fraud``, 7 -> ``fraud:7``: the one id of a pointer change, wherever it is copied."""
    return f"{model}:{epoch}"


def promote(
    before: PointerState | None,
    model: str,
    version: str,
    *,
    depth: int,
    actor: str,
    reason: str,
    now_ms: int,
) -> Change:
    cur = before or PointerState(model=model, epoch=0)
    if version == cur.live:
        raise PointerError("version is already live", model=model, version=version)
    history = cur.history
    if cur.live is not None:
        history = (cur.live, *history)
    history = tuple(v for v in dict.fromkeys(history) if v != version)[:depth]
    after = PointerState(
        model=model,
        epoch=cur.epoch + 1,
        live=version,
        previous=history[0] if history else None,
        canary=None if cur.canary == version else cur.canary,
        canary_percent=0.0 if cur.canary == version else cur.canary_percent,
        shadow=None if cur.shadow == version else cur.shadow,
        history=history,
    )
    return _change(before, after, "promote", actor, reason, now_ms)


def rollback(
    before: PointerState | None,
    model: str,
    to: str | None,
    *,
    actor: str,
    reason: str,
    now_ms: int,
) -> Change:
    if before is None or not before.history:
        raise PointerError("nothing to roll back to: the rollback history is empty", model=model)
    target = to if to is not None else before.history[0]
    if target not in before.history:
        raise PointerError(
            "version is not in the rollback history; promote it instead",
            model=model,
            version=target,
            history=list(before.history),
        )
    history = before.history[before.history.index(target) + 1 :]
    after = PointerState(
        model=model,
        epoch=before.epoch + 1,
        live=target,
        previous=history[0] if history else None,
        canary=None if before.canary == target else before.canary,
        canary_percent=0.0 if before.canary == target else before.canary_percent,
        shadow=None if before.shadow == target else before.shadow,
        history=history,
    )
    return _change(before, after, "rollback", actor, reason, now_ms)


def set_canary(
    before: PointerState | None,
    model: str,
    version: str | None,
    percent: float,
    *,
    actor: str,
    reason: str,
    now_ms: int,
) -> Change:
    if version is None:
        if before is None or before.canary is None:
            raise PointerError("no canary to clear", model=model)
        after = _replace(before, canary=None, canary_percent=0.0)
        return _change(before, after, "clear_canary", actor, reason, now_ms)
    cur = _needs_live(before, model, "a canary")
    if version == cur.live:
        raise PointerError(
            "the live version cannot be its own canary", model=model, version=version
        )
    if not 0.0 < percent <= 100.0:
        raise PointerError("canary percent must be > 0 and <= 100", model=model, percent=percent)
    shadow = None if cur.shadow == version else cur.shadow
    after = _replace(cur, canary=version, canary_percent=float(percent), shadow=shadow)
    return _change(before, after, "canary", actor, reason, now_ms)


def set_shadow(
    before: PointerState | None,
    model: str,
    version: str | None,
    *,
    actor: str,
    reason: str,
    now_ms: int,
) -> Change:
    if version is None:
        if before is None or before.shadow is None:
            raise PointerError("no shadow to clear", model=model)
        return _change(before, _replace(before, shadow=None), "clear_shadow", actor, reason, now_ms)
    cur = _needs_live(before, model, "a shadow")
    if version == cur.live:
        raise PointerError(
            "the live version cannot be its own shadow", model=model, version=version
        )
    return _change(before, _replace(cur, shadow=version), "shadow", actor, reason, now_ms)


def state_of(event: VersionEvent) -> PointerState:
    """The pointer an event describes (what restore writes back)."""
    return PointerState(
        model=event.model,
        epoch=event.epoch,
        live=event.live,
        previous=event.previous,
        canary=event.canary,
        canary_percent=event.canary_percent,
        shadow=event.shadow,
        history=tuple(event.history),
    )


def _needs_live(before: PointerState | None, model: str, what: str) -> PointerState:
    if before is None or before.live is None:
        raise PointerError(f"{what} needs a live version: promote one first", model=model)
    return before


def _replace(state: PointerState, **changes: Any) -> PointerState:
    return dataclasses.replace(state, epoch=state.epoch + 1, **changes)


def _change(
    before: PointerState | None,
    after: PointerState,
    action: VersionAction,
    actor: str,
    reason: str,
    now_ms: int,
) -> Change:
    try:
        event = VersionEvent(
            schema_version=CURRENT_SCHEMA_VERSION,
            event_id=event_id(after.model, after.epoch),
            ts=now_ms,
            model=after.model,
            action=action,
            live=after.live,
            previous=after.previous,
            canary=after.canary,
            canary_percent=after.canary_percent,
            shadow=after.shadow,
            epoch=after.epoch,
            actor=actor,
            reason=reason,
            history=after.history,
            from_live=before.live if before else None,
            from_canary=before.canary if before else None,
            from_shadow=before.shadow if before else None,
        )
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_input=False, include_url=False)
        )
        raise PointerError(f"invalid pointer change: {problems}", model=after.model) from None
    return Change(before, after, event)
