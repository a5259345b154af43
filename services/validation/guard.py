"""The guard: rolls back a live version that scores worse than the one it replaced.

The rules (the policy is the model's :class:`~services.learning.config.GuardConfig`)
----------------------------------------------------------------------------------
- **A watch per live change.** When the live version changes — the
  gateway's promotion, or a change by someone else (an operator's promote
  or rollback) noticed at tick — and ``guard.enabled``, the guard watches
  it (:meth:`Guard.on_live`): ``replaced`` is the pointer's ``previous``
  after the change (what a rollback returns to), and the watch counts the
  held-out examples added to the buffer from then on (``mark`` =
  ``buffer.added``). A live version with no ``previous`` (the first
  promotion, or a rollback depth of 0) has nothing to be compared with and
  is not watched (:meth:`Guard.describe` says so). The guard's own rollback
  starts no watch: it restores the version it judged better.
- **Judged on exactly the examples since the change.** Each time the count
  since the mark reaches a multiple of ``guard.min_examples`` (the first at
  ``min_examples``, further ones while the multiple is at most
  ``watch_examples``), the live and the replaced versions are scored on the
  examples added since the mark that the buffer still holds, by
  ``config.guard_metric``. ``difference`` is live minus replaced in the
  metric's better direction.
- **Early, on an alarm.** With ``guard.detector`` configured, every
  live-route answer scored against its feedback (:meth:`Guard.on_served`,
  whichever version served it, so the detector sees the error rate before
  and after the change) feeds one river drift detector. When it fires on an
  answer of the watched live version, the next judgement is due as soon as
  ``guard.detector_min_examples`` held-out examples came since the change
  (at once if they had). An alarm on answers of a version that is not
  watched (yet: an operator's change is noticed at the next tick, and its
  answers may come first) is remembered for it, and a watch of that version
  starting later takes it; an alarm on the answers of a version that stays
  unwatched is a drift in the traffic with no change to blame: counted and
  noted, nothing else. The alarm only brings the judgement forward; what it
  decides is the comparison below.
- **Regression.** Live is worse by more than ``threshold``
  (``difference < -threshold``) and, with ``guard.confidence`` above 0,
  worse request by request at that confidence (the one-sided sign test on
  the examples both scored, :func:`~services.validation.judging.sign_test`:
  ``p <= 1 - confidence``; an evaluator without per-example losses leaves
  the threshold alone to decide, and the reason says so), or live cannot be
  scored (a failed sanity
  check, e.g. NaN predictions, or no value) while the replaced version can:
  the guard rolls back
  (actor ``guard``, the reason with the figures, ``expected_epoch`` = the
  epoch read just before, after checking that live and previous are still
  the watched pair) and makes a ``rollback`` verdict (version = the bad
  live, baseline = replaced, the epoch after). It remembers the version
  (:attr:`Guard.rolled_back`, for the life of this object: the gateway
  never promotes it again), ends
  the watch and starts a cooldown of ``cooldown_s``: no judgement of this
  model until it ends (a new watch may start meanwhile; its judgement waits
  for the end of the cooldown, then uses every example since its mark).
- **Keep.** Otherwise (also when the replaced version cannot be scored, or
  both fail their checks: nothing better to return to) the verdict is
  ``keep``; the watch ends after the last judgement due within
  ``watch_examples``.
- **Pointer errors.** A change of live or previous since the judgement drops
  the rollback (the new live gets its own watch). A stale epoch is retried
  at once on the pointer read again, and then at tick; an unavailable or
  lost pointer, or an unexpected error, keeps the rollback pending and
  :meth:`Guard.tick` tries again (if a rollback that was not confirmed did
  apply, its verdict is made then). A refusal (e.g. the replaced version no
  longer verifies) is logged; the watch goes on and the next judgement
  tries again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.learning.adapters import Score
from services.learning.config import ModelConfig
from services.learning.drift import DriftMonitor
from services.pointer.base import (
    PointerError,
    PointerLostError,
    PointerState,
    PointerUnavailableError,
    StaleEpochError,
    VersionPointer,
)
from services.pointer.transitions import state_of
from services.validation import judging as J
from services.validation.base import VersionEvaluator
from services.validation.holdout import HoldoutBuffer
from services.validation.judging import Outcome

log = logging.getLogger(__name__)


@dataclass
class Watch:
    """A live version being watched against the one it replaced."""

    live: str
    replaced: str
    mark: int  # buffer.added when the watch started
    cause: str
    next_at: int  # examples since the mark at which the next judgement is due
    judgements: int = 0
    alarm: str | None = None  # a detector alarm on this version's answers, not yet judged


@dataclass
class Regression:
    """A rollback decided and not yet confirmed; ``sent`` once it was tried."""

    live: str
    replaced: str
    fields: dict[str, Any]
    sent: bool = False
    blocked: str | None = None


class Guard:
    """Watches one model's live version (see the module docstring for the rules).

    Parameters
    ----------
    config
        The model's configuration (``guard``, ``guard_metric``).
    buffer
        The model's holdout buffer (filled by the caller).
    evaluator, pointer
        Score versions; read and change the model's pointer.
    clock
        Seconds, monotonic: when cooldowns end.
    task
        ``"classification"`` or ``"regression"``: what the detector of
        ``guard.detector`` is fed (needed only when one is configured).
    """

    def __init__(
        self,
        config: ModelConfig,
        buffer: HoldoutBuffer,
        evaluator: VersionEvaluator,
        pointer: VersionPointer,
        clock: Callable[[], float],
        *,
        task: str | None = None,
    ) -> None:
        self.config = config
        self.model = config.name
        self.buffer = buffer
        self.evaluator = evaluator
        self.pointer = pointer
        self.clock = clock
        #: Versions this guard rolled back, which the gateway never promotes.
        self.rolled_back: set[str] = set()
        self.watch: Watch | None = None
        #: The live version this guard last saw (a change, or the first read).
        self.seen_live: str | None = None
        self.pending: Regression | None = None
        self.cooldown_until: float | None = None
        self.note = "no change of the live version seen yet"
        cfg = config.guard
        self.monitor: DriftMonitor | None = None
        if cfg.enabled and cfg.detector is not None:
            self.monitor = DriftMonitor(
                [cfg.detector],
                task=task or config.task or "classification",
                seed=config.seed,
                model=config.name,
            )
        #: Live-route answers fed to the detector, and its alarms (all, and with no watch to blame).
        self.served = 0
        self.alarms = 0
        self.unblamed_alarms = 0
        #: The last alarm on answers of a version not watched then: (version, what it said).
        self.unwatched_alarm: tuple[str, str] | None = None

    def on_live(self, state: PointerState, cause: str) -> None:
        """The live version changed to ``state.live`` (by ``cause``): watch it if it can be."""
        live = state.live
        self.seen_live = live
        if self.watch is not None and self.watch.live == live:
            return
        self.watch = None
        undone = self.pending is not None and self.pending.sent and live == self.pending.replaced
        if self.pending is not None and self.pending.live != live and not undone:
            log.info(
                "live of %s is now %s: the rollback of %s is dropped",
                self.model,
                live,
                self.pending.live,
            )
            self.pending = None
        if live is None:
            self.note = "nothing is live"
        elif not self.config.guard.enabled:
            self.note = f"the guard is disabled; {live} is not watched"
        elif state.previous is None:
            self.note = (
                f"{live} ({cause}) replaced no version the pointer can return to"
                " (first promotion, or no rollback history): nothing to compare with, not watched"
            )
        else:
            self.watch = Watch(
                live=live,
                replaced=state.previous,
                mark=self.buffer.added,
                cause=cause,
                next_at=self.config.guard.min_examples,
            )
            if self.unwatched_alarm is not None and self.unwatched_alarm[0] == live:
                self.watch.alarm = self.unwatched_alarm[1]
                self.unblamed_alarms -= 1  # blamed on this change after all
            self.unwatched_alarm = None
            self.note = f"watching {live} against {state.previous} since {cause}"

    def on_example(self) -> Outcome:
        """After an example was added: judge live if a judgement is due."""
        return self._maybe_judge()

    def on_served(self, version: str, score: Score) -> Outcome:
        """A live-route answer of ``version`` scored against its feedback: feed the
        detector (if one is configured); on an alarm, judge early (module docstring)."""
        if self.monitor is None:
            return Outcome()
        self.served += 1
        fired = self.monitor.update(score, self.served)
        if not fired:
            return Outcome()
        self.alarms += 1
        name = self.monitor.configs[0].kind
        w = self.watch
        if w is None or w.live != version:
            self.unblamed_alarms += 1
            self.unwatched_alarm = (
                version,
                f"{name} alarm on the live error stream (on {version}'s answers before its"
                " watch began)",
            )
            log.info(
                "%s: %s alarm on the live error stream (answer %d, by %s) with no watched"
                " change of live to blame (yet): a drift in the traffic unless a change of"
                " live to %s is noticed",
                self.model,
                name,
                self.served,
                version,
                version,
            )
            return Outcome()
        if w.alarm is None:
            seen = self.buffer.added - w.mark
            w.alarm = f"{name} alarm on the live error stream after {seen} held-out examples"
            log.info("%s: %s alarm on answers of %s: judged early", self.model, name, w.live)
        return self._maybe_judge()

    def tick(self) -> Outcome:
        """End a cooldown that is over, retry a pending rollback, judge if due."""
        if self.cooldown_until is not None and self.clock() >= self.cooldown_until:
            self.cooldown_until = None
        if self.pending is not None:
            return self._rollback(self.pending)
        return self._maybe_judge()

    def unjudged(self, live: str | None = None) -> str | None:
        """Why a candidate must wait, or None: ``live`` (the live version the
        gateway just read) is not the one the guard last saw go live (a change
        by someone else, noticed at the next tick), the guard cools down after a
        rollback (no change lands that it could not judge), or it watches a live
        version it has not judged once yet, or has a rollback of it pending."""
        if not self.config.guard.enabled:
            return None
        if live is not None and live != self.seen_live:
            return f"the guard has not seen {live} go live yet (noticed at its next tick)"
        if self.cooling() and self.cooldown_until is not None:
            left = self.cooldown_until - self.clock()
            return f"the guard cools down after its rollback ({left:.0f} s left)"
        if self.pending is not None:
            return f"the guard's rollback of {self.pending.live} is pending"
        w = self.watch
        if w is None or w.judgements > 0:
            return None
        seen = self.buffer.added - w.mark
        return (
            f"the guard has not judged {w.live} yet ({seen} of {w.next_at} held-out examples"
            f" since {w.cause})"
        )

    def cooling(self) -> bool:
        return self.cooldown_until is not None and self.clock() < self.cooldown_until

    def describe(self) -> dict[str, Any]:
        w = self.watch
        remaining = (
            max(0.0, self.cooldown_until - self.clock()) if self.cooldown_until is not None else 0.0
        )
        return {
            "enabled": self.config.guard.enabled,
            "watch": None
            if w is None
            else {
                "live": w.live,
                "replaced": w.replaced,
                "since": w.cause,
                "examples_since_promotion": self.buffer.added - w.mark,
                "next_judgement_at": w.next_at,
                "judgements": w.judgements,
                "alarm": w.alarm,
            },
            "detector": None
            if self.monitor is None
            else {
                "answers_seen": self.served,
                "alarms": self.alarms,
                "alarms_without_a_change": self.unblamed_alarms,
                **self.monitor.summary(),
            },
            "note": self.note,
            "cooldown_remaining_s": remaining,
            "pending_rollback": None if self.pending is None else self.pending.live,
        }

    # -- judging -----------------------------------------------------------

    def _maybe_judge(self) -> Outcome:
        w = self.watch
        if w is None or self.pending is not None or self.cooling():
            return Outcome()
        seen = self.buffer.added - w.mark
        cfg = self.config.guard
        alarmed = w.alarm is not None and seen >= cfg.detector_min_examples
        if seen < w.next_at and not alarmed:
            return Outcome()
        w.judgements += 1
        if seen >= w.next_at:
            w.next_at = (seen // cfg.min_examples + 1) * cfg.min_examples
        early, w.alarm = (w.alarm if alarmed else None), None
        fields, regressed = self._compare(w, seen)
        if early is not None:
            fields["reason"] = f"{early}: {fields['reason']}"
        if regressed:
            return self._rollback(Regression(w.live, w.replaced, fields))
        last = w.next_at > cfg.watch_examples
        if last:
            self.watch = None
            self.note = f"watched {w.live} for {seen} held-out examples: kept"
        fields["reason"] += "; kept" + (" (watch over)" if last else "")
        return Outcome(verdicts=[J.verdict(**fields, decision="keep")])

    def _compare(self, w: Watch, seen: int) -> tuple[dict[str, Any], bool]:
        cfg = self.config.guard
        metric = self.config.guard_metric
        examples = self.buffer.since(w.mark)
        live = J.evaluate(self.evaluator, self.model, w.live, examples, metric)
        base = J.evaluate(self.evaluator, self.model, w.replaced, examples, metric)
        n = len(examples)
        on = f"{n} held-out examples since {w.cause}" + (
            f" (the most recent of {seen})" if n < seen else ""
        )
        on += J.skipped(live, base)
        fields: dict[str, Any] = {
            "model": self.model,
            "version": w.live,
            "baseline_version": w.replaced,
            "judge": "guard",
            "policy": "guard",
            "checks": dict(live.checks),
            "metric": metric,
            "candidate": J.value(live),
            "baseline": J.value(base),
            "n": len(examples),
            "allowance": cfg.threshold,
            "min_examples": cfg.min_examples,
        }
        lv, bv = J.value(live), J.value(base)
        if lv is None and bv is not None:
            fields["reason"] = (
                f"live {w.live} {J.failure(live)}, replaced {w.replaced} passes"
                f" ({metric} {J.num(bv)}) on {on}"
            )
            return fields, True
        if lv is None:
            fields["reason"] = (
                f"live {w.live} {J.failure(live)}; replaced {w.replaced} too"
                f" ({J.failure(base)}) on {on}: nothing better to return to"
            )
            return fields, False
        if bv is None:
            fields["reason"] = (
                f"replaced {w.replaced} cannot be scored ({J.failure(base)}); live {w.live}"
                f" {metric} {J.num(lv)} on {on}: nothing to compare with"
            )
            return fields, False
        diff = J.difference(metric, lv, bv)
        fields["difference"] = diff
        beyond = diff < -cfg.threshold
        reason = (
            f"live {w.live} {metric} {J.num(lv)} vs replaced {w.replaced}"
            f" {J.num(bv)} on {on}: difference {J.signed(diff)}"
            f" ({J.direction(metric)} is better) {'beyond' if beyond else 'within'}"
            f" the threshold {cfg.threshold:g}"
        )
        significant = True
        if cfg.confidence > 0:
            test = J.sign_test(live, base)
            if test is not None:
                fields["p_value"] = test.p
                significant = test.p <= 1.0 - cfg.confidence
            if beyond and test is None:
                reason += "; no per-example losses: the threshold alone decides"
            elif beyond and test is not None:
                reason += (
                    f"; live {test.describe()},"
                    f" {'' if significant else 'not '}significant at {cfg.confidence:g}"
                )
        fields["reason"] = reason
        return fields, beyond and significant

    def _rollback(self, reg: Regression) -> Outcome:
        self.pending = None
        for _attempt in range(2):
            try:
                state = self.pointer.get(self.model)
            except Exception as exc:  # noqa: BLE001 - any read failure: retried at tick
                return self._wait(reg, "reading the pointer", exc)
            if state is None or state.live != reg.live:
                if reg.sent and state is not None and state.live == reg.replaced:
                    return self._done(reg, state, " (applied; Redis did not confirm it at first)")
                live = state.live if state is not None else None
                return self._dropped(reg, f"live is {live} now")
            if state.previous != reg.replaced:
                return self._dropped(reg, f"previous is {state.previous} now, not {reg.replaced}")
            reason = f"{reg.fields['reason']}; rolled back to {reg.replaced}"
            try:
                event = self.pointer.rollback(
                    self.model, actor="guard", reason=J.cut(reason), expected_epoch=state.epoch
                )
            except StaleEpochError:
                continue
            except (PointerLostError, PointerUnavailableError) as exc:
                reg.sent = True
                return self._wait(reg, "rolling back", exc)
            except PointerError as exc:  # VersionRefusedError and other refusals
                log.error(
                    "the pointer refused to roll back %s of %s: %s", reg.live, self.model, exc
                )
                self.note = f"rolling back {reg.live} was refused: {exc}"
                return Outcome()
            except Exception as exc:  # noqa: BLE001 - e.g. a raw client error: retried at tick
                reg.sent = True
                return self._wait(reg, "rolling back", exc)
            return self._done(reg, state_of(event), "")
        return self._wait(reg, "rolling back", StaleEpochError("the pointer kept changing"))

    def _done(self, reg: Regression, after: PointerState, note: str) -> Outcome:
        self.rolled_back.add(reg.live)
        self.cooldown_until = self.clock() + self.config.guard.cooldown_s
        self.watch = None
        self.note = (
            f"rolled back {reg.live} to {reg.replaced} at epoch {after.epoch};"
            f" cooldown {self.config.guard.cooldown_s:g}s"
        )
        reason = f"{reg.fields['reason']}; rolled back to {reg.replaced}{note}"
        fields = {**reg.fields, "reason": reason, "decision": "rollback", "epoch": after.epoch}
        return Outcome(verdicts=[J.verdict(**fields)], changes=[after])

    def _dropped(self, reg: Regression, why: str) -> Outcome:
        """The pointer moved on since the judgement: the rollback no longer applies."""
        log.info("%s: %s was judged a regression, not rolled back: %s", self.model, reg.live, why)
        self.note = f"{reg.live} was judged a regression but not rolled back: {why}"
        return Outcome()

    def _wait(self, reg: Regression, doing: str, exc: Exception) -> Outcome:
        if reg.blocked is None:
            log.warning(
                "rolling back %s of %s waits for the pointer (retried each tick): %s: %s",
                reg.live,
                self.model,
                doing,
                exc,
            )
        reg.blocked = f"{doing}: {exc}"
        self.pending = reg
        self.note = f"rollback of {reg.live} pending: {reg.blocked}"
        return Outcome()
