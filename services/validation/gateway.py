"""The validation gateway: judges one model's candidate checkpoints against its live version.

The rules (the policy is the model's :class:`~services.learning.config.PromotionConfig`)
--------------------------------------------------------------------------------------
- **Judged on the same examples.** A candidate is judged once the model's
  holdout buffer holds at least ``promotion.min_examples`` examples: the
  candidate and the live version are scored on one snapshot of the buffer by
  ``config.promotion_metric``. ``difference`` is candidate minus live in the
  metric's better direction. The candidate passes when its evaluation
  passed (every sanity check, a finite value) and ``difference >=
  -tolerance``. In ``auto`` mode a candidate that passed is promoted through
  the pointer (actor ``gateway``, reason = the verdict's reason,
  ``expected_epoch`` = the epoch read when judging): decision ``promote``
  with the epoch after it; in ``manual`` mode it is ``hold``; in ``canary``
  mode it is set as the model's canary at ``canary_percent`` percent
  (``set_canary``, same actor, reason and ``expected_epoch``): decision
  ``canary`` with the epoch after it, and the
  :class:`~services.validation.canary.CanaryStage` then promotes or rejects
  it on its canary-route examples (its own rules). With
  ``promotion.shadow_examples`` > 0, in ``auto`` and ``canary`` mode with a
  live version, a candidate that passed is first set as the model's shadow
  (``set_shadow``, same actor, reason and ``expected_epoch``): decision
  ``shadow`` with the epoch after it, and the
  :class:`~services.validation.shadow.ShadowStage` judges it on its shadow
  answers paired with live's, then promotes it (``auto``), sets it as canary
  (``canary``: the canary stage follows) or rejects it. A candidate
  that fails is ``reject``. A live version that cannot be scored (a failed
  check, or no value) is no baseline: a candidate whose evaluation passed
  passes. Examples the model refuses (``Evaluation.skipped``, the same for
  every version) are named in the reason.
- **Bootstrap.** With nothing live, the first candidate that passes its
  sanity checks on whatever held-out examples there are passes at once,
  without waiting for ``min_examples`` — no version serving means no
  traffic, so no held-out examples would ever come. It is judged by its
  checks alone (:func:`~services.validation.judging.sane`: every check that
  ran passed; no value is needed, as there may be no examples yet, or a
  fresh classifier scores none). In ``canary`` mode too it is promoted: a
  canary needs a live version.
- **One trial at a time.** While a shadow or a canary runs (until its
  stage's last verdict), a candidate waits (newest wins) and is judged once
  it is decided, against the live version then; one that already scores
  worse than live is rejected at once (see "waiting" below).
- **Ignored, no verdict:** a candidate equal to the live version, one already
  judged (replays of ``checkpoint-events`` after a rebalance) or the one
  already waiting. The memory of judged versions is this object's
  (the last :data:`REMEMBERED` per model): a new process may judge a replayed
  candidate again.
- **Rolled back.** A version the guard rolled back is never promoted by the
  gateway: ``reject`` saying so (an operator can still promote it by hand).
- **One unvalidated change at a time.** While the guard watches a live
  version it has not judged once yet (``GuardConfig.min_examples`` held-out
  examples after the change), or has not yet seen the live version the
  gateway reads (a change by someone else, noticed at the guard's next
  tick), a candidate waits (newest wins), so a new promotion never lands on
  top of one nobody has checked on live traffic yet — not even on top of a
  version an operator forced live a moment ago. Waiting holds back only
  changes: a waiting candidate is compared with the live version at once
  (once per live version and epoch) and, when it fails, rejected at once (a
  rejection changes nothing live, so a bad candidate is refused before a
  newer one can supersede it); one that passes waits, and is judged again on
  the examples there are when the guard is done.
- **Newest wins.** While a candidate waits (for examples or for the
  pointer), a newer candidate of the model replaces it; the replaced one gets
  a ``superseded`` verdict naming the newer one.
- **Pointer errors.** :class:`~services.pointer.base.StaleEpochError` (the
  pointer changed while judging): judged again against the new live, once;
  a second one rejects it with the reason.
  :class:`~services.pointer.base.PointerUnavailableError` (Redis down), any
  error that is not a :class:`~services.pointer.base.PointerError` (e.g. a
  raw client error) and :class:`~services.pointer.base.PointerLostError`
  (restore needed): the candidate stays pending, blocked, and :meth:`retry`
  (each tick) tries again, re-reading the pointer first: while its live
  version and epoch are the same, the comparison made stands (no new
  evaluation) and only the promotion (or the setting of the canary) is
  retried; if one that was not confirmed did apply, its ``promote`` (or
  ``canary``) verdict is made then.
  :class:`~services.pointer.base.VersionRefusedError` and other refusals:
  ``reject`` with the reason.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import Any

from schemas.events import CheckpointEvent, ShadowScore, TrainingExample, Verdict
from services.learning.config import ModelConfig
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
from services.validation.base import HoldoutExample, VersionEvaluator
from services.validation.canary import CanaryStage
from services.validation.holdout import HoldoutBuffer
from services.validation.judging import Outcome
from services.validation.shadow import ShadowStage

log = logging.getLogger(__name__)

#: Judged versions remembered per model (replays of these are ignored).
REMEMBERED = 10_000


@dataclass
class Candidate:
    """A candidate waiting to be judged.

    ``blocked`` says why the pointer could not be read or changed (retried at
    tick); ``sent`` holds the verdict fields of a promotion whose outcome is
    unknown (the pointer was unavailable while promoting); ``scored`` the
    last comparison and the pointer's ``(live, epoch)`` it was made at, which
    a retry reuses while the pointer has not changed (no new evaluation);
    ``waiting`` why it waits for the guard (judged at the next held-out example).
    """

    version: str
    blocked: str | None = None
    waiting: str | None = None
    sent: dict[str, Any] | None = None
    scored: tuple[tuple[str | None, int], Comparison] | None = None
    prejudged: tuple[str | None, int] | None = None  # compared while waiting, at (live, epoch)


@dataclass(frozen=True)
class Comparison:
    """A candidate scored against the live version, and whether it passes."""

    fields: dict[str, Any]
    passed: bool
    summary: str


class Gateway:
    """Judges one model's candidates (see the module docstring for the rules).

    Parameters
    ----------
    config
        The model's configuration (``promotion``, ``promotion_metric``).
    buffer
        The model's holdout buffer (filled by the caller).
    evaluator, pointer
        Score versions; read and change the model's pointer.
    rolled_back
        Versions the guard rolled back (the gateway never promotes them).
    unsettled
        Why candidates must wait for the guard, given the live version just
        read, or None (:meth:`Guard.unjudged`).
    """

    def __init__(
        self,
        config: ModelConfig,
        buffer: HoldoutBuffer,
        evaluator: VersionEvaluator,
        pointer: VersionPointer,
        rolled_back: Container[str],
        unsettled: Callable[[str | None], str | None] = lambda live: None,
    ) -> None:
        self.config = config
        self.model = config.name
        self.buffer = buffer
        self.evaluator = evaluator
        self.pointer = pointer
        self.rolled_back = rolled_back
        self.unsettled = unsettled
        self.pending: Candidate | None = None
        self.canary = CanaryStage(config, pointer)
        self.shadow = ShadowStage(config, pointer, then_canary=self.canary.start)
        self._judged: OrderedDict[str, None] = OrderedDict()

    def offer(self, event: CheckpointEvent) -> Outcome:
        """A new candidate: judged now if it can be, else it waits (replacing an older one)."""
        version = event.version
        if version in self._judged or (self.pending and self.pending.version == version):
            return Outcome()
        out = Outcome()
        if self.pending is not None:
            out.verdicts.append(self._superseded(self.pending, version))
            self._remember(self.pending.version)
        self.pending = Candidate(version)
        out.extend(self._judge(self.pending))
        return out

    def on_example(self) -> Outcome:
        """After an example was added: judge the waiting candidate if it has enough now."""
        cand = self.pending
        if cand is None or cand.blocked is not None:
            return Outcome()
        if len(self.buffer) < self.config.promotion.min_examples:
            return Outcome()
        return self._judge(cand)

    def on_attributed(self, example: TrainingExample) -> Outcome:
        """Every attributed example (held out or not): the running canary counts it; a
        candidate waiting for the canary is judged once the canary is decided."""
        if self.canary.run is None:
            return Outcome()
        out = self.canary.on_example(example)
        out.extend(self._after_trial())
        return out

    def on_shadow_score(self, score: ShadowScore) -> Outcome:
        """Every shadow score: the running shadow stage counts it; a candidate waiting
        for it is judged once it is decided (and a canary it became, too)."""
        if self.shadow.run is None:
            return Outcome()
        out = self.shadow.on_score(score)
        out.extend(self._after_trial())
        return out

    def retry(self) -> Outcome:
        """Each tick: follow the running trial; judge again a candidate blocked by the pointer."""
        for stage in (self.shadow, self.canary):
            if stage.run is not None:
                out = stage.tick()
                out.extend(self._after_trial())
                return out
        cand = self.pending
        if cand is None or cand.blocked is None:
            return Outcome()
        return self._judge(cand)

    def _trial(self) -> str | None:
        """Why candidates wait for a running shadow or canary, or None."""
        return self.shadow.waiting() or self.canary.waiting()

    def _after_trial(self) -> Outcome:
        cand = self.pending
        if self._trial() is not None or cand is None or cand.blocked is not None:
            return Outcome()
        return self._judge(cand)

    def describe(self) -> dict[str, Any] | None:
        cand = self.pending
        if cand is None:
            return None
        return {
            "version": cand.version,
            "examples": len(self.buffer),
            "min_examples": self.config.promotion.min_examples,
            "blocked": cand.blocked,
            "waiting_for_guard": cand.waiting,
            "waiting_for_canary": self.canary.waiting(),
            "waiting_for_shadow": self.shadow.waiting(),
            "promotion_unconfirmed": cand.sent is not None,
        }

    # -- judging -----------------------------------------------------------

    def _judge(self, cand: Candidate) -> Outcome:
        if self._trial() is not None and cand.prejudged is not None:
            cand.blocked = None  # compared once already; judged when the trial is decided
            return Outcome()
        stale: list[str] = []
        while True:
            try:
                state = self.pointer.get(self.model)
            except Exception as exc:  # noqa: BLE001 - any read failure: retried at tick
                self._block(cand, "reading the pointer", exc)
                return Outcome()
            live = state.live if state is not None else None
            epoch = state.epoch if state is not None else 0
            if cand.sent is not None and state is not None and _applied(cand, state):
                reason = f"{cand.sent['reason']} (applied; Redis did not confirm it at first)"
                fields = {**cand.sent, "reason": reason, "epoch": epoch}
                out = self._finish(cand, J.verdict(**fields))
                out.changes.append(state)
                self._start_trial(fields, live, epoch)
                return out
            cand.sent = None  # a promotion sent before did not apply (or was undone)
            if live == cand.version:
                self._finish(cand, None)
                return Outcome()
            if cand.version in self.rolled_back:
                return self._finish(cand, self._rejected_rolled_back(cand.version, live))
            examples = self.buffer.examples()
            if live is not None and len(examples) < self.config.promotion.min_examples:
                cand.blocked = None
                return Outcome()
            waiting: str | None = self._trial()
            if waiting is None:
                waiting = self.unsettled(live) if live is not None else None
            if waiting is not None:
                cand.blocked, cand.waiting = None, waiting
                if cand.prejudged == (live, epoch):
                    return Outcome()
                cand.prejudged = (live, epoch)
                early = self._compare(cand.version, live, examples)
                if early.passed:
                    return Outcome()  # judged again once the guard is done
                return self._decide(
                    cand, early, "reject", f"rejected (while the candidate waited: {waiting})"
                )
            cand.waiting = None
            if cand.scored is not None and cand.scored[0] == (live, epoch):
                comparison = cand.scored[1]
            else:
                comparison = self._compare(cand.version, live, examples)
                cand.scored = ((live, epoch), comparison)
            again = f" (judged again: {stale[0]})" if stale else ""
            if not comparison.passed:
                return self._decide(cand, comparison, "reject", "rejected" + again)
            if self.config.promotion.mode == "manual":
                held = "held: the policy is manual, an operator promotes"
                return self._decide(cand, comparison, "hold", held + again)
            cfg = self.config.promotion
            if ShadowStage.used(self.config) and live is not None:
                decision = "shadow"
                done = (
                    f"set as shadow (judged after {cfg.shadow_examples} shadow answers paired"
                    " with live's)"
                )
            elif cfg.mode == "canary" and live is not None:
                decision = "canary"
                done = (
                    f"set as canary at {cfg.canary_percent:g}% of the traffic (judged after"
                    f" {cfg.canary_examples} canary examples)"
                )
            else:
                decision = "promote"
                done = "promoted (bootstrap)" if live is None else "promoted"
            fields = {**comparison.fields, "decision": decision}
            fields["reason"] = f"{comparison.summary}; {done}{again}"
            try:
                if decision == "shadow":
                    event = self.pointer.set_shadow(
                        self.model,
                        cand.version,
                        actor="gateway",
                        reason=J.cut(fields["reason"]),
                        expected_epoch=epoch,
                    )
                elif decision == "canary":
                    event = self.pointer.set_canary(
                        self.model,
                        cand.version,
                        cfg.canary_percent,
                        actor="gateway",
                        reason=J.cut(fields["reason"]),
                        expected_epoch=epoch,
                    )
                else:
                    event = self.pointer.promote(
                        self.model,
                        cand.version,
                        actor="gateway",
                        reason=J.cut(fields["reason"]),
                        expected_epoch=epoch,
                    )
            except StaleEpochError as exc:
                if not stale:
                    stale.append(f"the pointer changed from epoch {epoch} while judging")
                    continue
                fields["decision"] = "reject"
                fields["reason"] = (
                    f"{comparison.summary}; rejected: the pointer changed again while judging"
                    f" ({stale[0]}, then {exc}); an operator can promote it"
                )
                return self._finish(cand, J.verdict(**fields))
            except (PointerLostError, PointerUnavailableError) as exc:
                cand.sent = fields
                self._block(cand, "promoting", exc)
                return Outcome()
            except PointerError as exc:  # VersionRefusedError and other refusals
                fields["decision"] = "reject"
                fields["reason"] = f"{comparison.summary}; rejected: the pointer refused it: {exc}"
                return self._finish(cand, J.verdict(**fields))
            except Exception as exc:  # noqa: BLE001 - e.g. a raw client error: retried at tick
                cand.sent = fields
                self._block(cand, "promoting", exc)
                return Outcome()
            out = self._finish(cand, J.verdict(**{**fields, "epoch": event.epoch}))
            out.changes.append(state_of(event))
            self._start_trial(fields, live, event.epoch)
            return out

    def _start_trial(self, fields: dict[str, Any], live: str | None, epoch: int) -> None:
        """After a ``shadow`` or ``canary`` verdict: its stage follows the candidate."""
        if live is None:
            return
        if fields["decision"] == "shadow":
            self.shadow.start(fields["version"], live, epoch, fields["checks"])
        elif fields["decision"] == "canary":
            self.canary.start(fields["version"], live, epoch, fields["checks"])

    def _compare(
        self, version: str, live: str | None, examples: list[HoldoutExample]
    ) -> Comparison:
        cfg = self.config.promotion
        metric = self.config.promotion_metric
        judged = J.evaluate(self.evaluator, self.model, version, examples, metric)
        base = (
            J.evaluate(self.evaluator, self.model, live, examples, metric)
            if live is not None
            else None
        )
        fields: dict[str, Any] = {
            "model": self.model,
            "version": version,
            "baseline_version": live,
            "judge": "gateway",
            "policy": cfg.mode,
            "checks": dict(judged.checks),
            "metric": metric,
            "candidate": J.value(judged),
            "baseline": J.value(base),
            "n": len(examples),
            "allowance": cfg.tolerance,
            "min_examples": cfg.min_examples,
        }
        n = len(examples)
        on = f"{n} held-out examples{J.skipped(judged, base)}"
        jv, bv = J.value(judged), J.value(base)
        score = f"{metric} {J.num(jv)}"
        if base is None:
            passed = J.sane(judged)
            if passed:
                summary = (
                    f"nothing is live yet: {version} passed its sanity checks"
                    f" ({J.passed_checks(judged)}) on {on} ({score})"
                )
            else:
                summary = f"nothing is live yet: {version} {J.failure(judged)}"
        elif jv is None:
            passed, summary = False, f"{version} {J.failure(judged)}"
        elif bv is None:
            passed = True
            summary = (
                f"live {live} cannot be scored ({J.failure(base)}); {version} passed its"
                f" sanity checks ({score} on {on})"
            )
        else:
            diff = J.difference(metric, jv, bv)
            fields["difference"] = diff
            passed = diff >= -cfg.tolerance
            summary = (
                f"{version} {score} vs live {live} {J.num(bv)} on {on}:"
                f" difference {J.signed(diff)} ({J.direction(metric)} is better)"
                f" {'within' if passed else 'beyond'} the tolerance {cfg.tolerance:g}"
            )
        return Comparison(fields=fields, passed=passed, summary=summary)

    def _decide(self, cand: Candidate, comparison: Comparison, decision: str, what: str) -> Outcome:
        fields = {**comparison.fields, "decision": decision}
        fields["reason"] = f"{comparison.summary}; {what}"
        return self._finish(cand, J.verdict(**fields))

    def _rejected_rolled_back(self, version: str, live: str | None) -> Verdict:
        cfg = self.config.promotion
        return J.verdict(
            model=self.model,
            version=version,
            baseline_version=live,
            judge="gateway",
            policy=cfg.mode,
            decision="reject",
            reason=(
                f"{version} was rolled back by the guard: the gateway never promotes it again"
                " (an operator can)"
            ),
            metric=self.config.promotion_metric,
            allowance=cfg.tolerance,
            min_examples=cfg.min_examples,
        )

    def _superseded(self, cand: Candidate, newer: str) -> Verdict:
        cfg = self.config.promotion
        version = cand.version
        running = self._trial()
        if running is not None:
            waited = running
        elif cand.blocked is not None:
            waited = cand.blocked
        elif cand.waiting is not None:
            waited = cand.waiting
        else:
            waited = f"{len(self.buffer)} of {cfg.min_examples} held-out examples"
        return J.verdict(
            model=self.model,
            version=version,
            judge="gateway",
            policy=cfg.mode,
            decision="superseded",
            reason=(
                f"a newer candidate {newer} arrived before {version} was judged"
                f" (it waited: {waited}): newest wins"
            ),
            metric=self.config.promotion_metric,
            n=len(self.buffer),
            allowance=cfg.tolerance,
            min_examples=cfg.min_examples,
        )

    def _finish(self, cand: Candidate, verdict: Verdict | None) -> Outcome:
        """``cand`` is done (judged, or ignored as live); the outcome holds its verdict."""
        if self.pending is cand:
            self.pending = None
        self._remember(cand.version)
        if cand.blocked is not None:
            log.info("the pointer answers again; %s of %s judged", cand.version, self.model)
        return Outcome(verdicts=[verdict] if verdict is not None else [])

    def _remember(self, version: str) -> None:
        self._judged[version] = None
        while len(self._judged) > REMEMBERED:
            self._judged.popitem(last=False)

    def _block(self, cand: Candidate, doing: str, exc: Exception) -> None:
        why = f"{doing}: {exc!r}" if not isinstance(exc, PointerError) else f"{doing}: {exc}"
        if cand.blocked is None:
            level = logging.ERROR if isinstance(exc, PointerLostError) else logging.WARNING
            log.log(
                level,
                "%s of %s waits for the pointer (retried each tick): %s",
                cand.version,
                self.model,
                why,
            )
        cand.blocked = why


def _applied(cand: Candidate, state: PointerState) -> bool:
    """Whether the change ``cand.sent`` describes is what the pointer shows."""
    assert cand.sent is not None  # noqa: S101 - the caller checked; guards no input
    if cand.sent["decision"] == "shadow":
        return state.shadow == cand.version and state.live != cand.version
    if cand.sent["decision"] == "canary":
        return state.canary == cand.version and state.live != cand.version
    return state.live == cand.version
