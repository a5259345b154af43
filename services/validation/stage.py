"""What the gateway's trial stages share: a candidate tried in a pointer slot on live traffic.

A candidate that passed its holdout comparison can be tried on live traffic
before it is promoted: in the canary slot (:mod:`services.validation.canary`,
its answers served to a share of the requests) or in the shadow slot
(:mod:`services.validation.shadow`, its answers logged beside the live ones,
never returned). :class:`TrialStage` follows one such trial per model, from
the pointer change that set it to the verdict that ends it; a subclass says
which slot, which answers are counted and what a pass does.

The rules every trial follows
-----------------------------
- **Counted.** The subclass feeds :attr:`TrialRun.figures` (a private
  :class:`~services.validation.live_metrics.LiveMetrics`) with the
  candidate's answers on its route and the live version's on route
  ``live``, each scored as the live metrics score served predictions (the
  logged answer against the label, with the trainer's label conversion).
- **Judged once** the promotion metric was fed ``needed`` of the
  candidate's answers: candidate over all of them against live over its
  counted answers. ``difference`` is candidate minus live in the metric's
  better direction; not worse than ``-tolerance``: the pass (the
  subclass's pointer change, actor ``gateway``); else the slot is cleared,
  decision ``reject``. Where the subclass also records each counted
  answer's own loss (:meth:`TrialStage.note_loss`: the canary, whose answers
  and live's are to different requests) and ``canary_confidence`` is above
  0, a reject also needs the candidate worse at that confidence by the
  one-sided Welch test of the two loss samples
  (:func:`~services.validation.judging.welch_worse`; the verdict's
  ``p_value``): a difference within the noise of the sample passes, as the
  candidate passed the same-request holdout comparison already and the
  guard watches it once live. A live version with no counted answer is no
  baseline: the candidate passes on its own figures.
- **Changed by someone else** (noticed at the decision, or at each tick):
  the candidate promoted: the run ends without a verdict; the slot cleared
  or given to another version: ``reject`` (nothing to clear); the live
  version changed under it: the baseline is gone, the slot is cleared and
  ``reject``.
- **Pointer errors.** A stale epoch: the pointer is read again and the
  change retried at once (once), then at tick. Redis unavailable, a lost
  pointer or an unexpected error: the decision stands and is retried at each
  tick (:meth:`TrialStage.tick`); a change that applied although its reply
  was lost gets its verdict then. The pointer refusing the pass (e.g. the
  version no longer verifies): ``reject``, the slot cleared.
- **The process's memory.** The run lives in this object: a gateway that
  restarts while a trial it set runs does not follow it again; the version
  stays in its slot until an operator changes it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

from schemas.errors import SchemaError
from schemas.events import TrainingExample, VersionEvent
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
from services.validation.evaluate import example_loss
from services.validation.judging import Outcome
from services.validation.live_metrics import (
    PROBA_METRICS,
    LabelRule,
    LiveMetrics,
    label_rule,
    score_served,
)

log = logging.getLogger(__name__)

#: The route the live version's answers are counted on in every trial.
LIVE_ROUTE = "live"


@dataclass
class TrialRun:
    """A trial being followed: the candidate, the live version it is compared with.

    ``decided`` holds the verdict fields of a decision not yet applied to the
    pointer (``blocked`` says why); ``sent`` that the change was tried and
    its outcome is unknown.
    """

    version: str
    live: str
    epoch: int  # the pointer's epoch after the candidate was set in its slot
    checks: dict[str, bool]
    figures: LiveMetrics
    decided: dict[str, Any] | None = None
    blocked: str | None = None
    sent: bool = False
    #: Each counted answer's own loss under the promotion metric, by route, where the
    #: stage records them (:meth:`TrialStage.note_loss`).
    losses: dict[str, list[float]] = field(default_factory=dict)


class TrialStage:
    """Follows one model's trial in a pointer slot (see the module docstring).

    Parameters
    ----------
    config
        The model's configuration (``promotion``, ``promotion_metric``).
    pointer
        Reads and changes the model's pointer.
    rule
        The model's label conversion; default
        :func:`~services.validation.live_metrics.label_rule` of ``config``,
        built only when the stage is used (:meth:`used`).
    """

    #: The pointer slot the candidate is tried in.
    slot: ClassVar[str]
    #: The route its answers are counted on in :attr:`TrialRun.figures`.
    route: ClassVar[str]
    #: What its counted answers are called, in reasons.
    unit: ClassVar[str]
    #: What the live version's counted answers are called, in reasons.
    live_unit: ClassVar[str]
    #: What :meth:`waiting` counts.
    waits_for: ClassVar[str]

    def __init__(
        self, config: ModelConfig, pointer: VersionPointer, rule: LabelRule | None = None
    ) -> None:
        self.config = config
        self.model = config.name
        self.pointer = pointer
        self.rule = rule
        if rule is None and self.used(config):
            self.rule = label_rule(config)
        self.run: TrialRun | None = None

    # -- what a subclass says ----------------------------------------------

    @classmethod
    def used(cls, config: ModelConfig) -> bool:
        """Whether ``config``'s policy runs this stage."""
        raise NotImplementedError

    @property
    def needed(self) -> int:
        """How many of the candidate's answers it is judged on."""
        raise NotImplementedError

    @property
    def policy(self) -> str:
        """The verdicts' ``policy``."""
        raise NotImplementedError

    def held(self, state: PointerState) -> str | None:
        """The version in this stage's slot."""
        raise NotImplementedError

    def passed(self) -> tuple[str, str]:
        """The decision of a pass and what it does, in words."""
        raise NotImplementedError

    def pass_change(self, run: TrialRun, reason: str, epoch: int) -> VersionEvent:
        """Make the pass on the pointer (``expected_epoch=epoch``)."""
        raise NotImplementedError

    def clear(self, reason: str, epoch: int) -> VersionEvent:
        """Empty this stage's slot (``expected_epoch=epoch``)."""
        raise NotImplementedError

    def after_pass(self, run: TrialRun, after: PointerState) -> None:
        """Called once a pass applied (the pointer ``after`` it); nothing by default."""

    # -- the run -----------------------------------------------------------

    def start(self, version: str, live: str, epoch: int, checks: dict[str, bool]) -> None:
        """``version`` was set in the slot against ``live`` (the pointer at ``epoch``)."""
        assert self.rule is not None  # noqa: S101 - built when the stage is used; guards no input
        figures = LiveMetrics({self.model: self.config}, rules={self.model: self.rule})
        self.run = TrialRun(version, live, epoch, dict(checks), figures)

    def waiting(self) -> str | None:
        """Why a newer candidate must wait, or None (no trial is running)."""
        run = self.run
        if run is None:
            return None
        if run.decided is not None:
            return (
                f"the {self.slot} {run.version} was judged ({run.decided['decision']}); the"
                f" pointer change waits: {run.blocked}"
            )
        n, _ = self._tally(run, run.version, self.route)
        return f"the {self.slot} {run.version} is running ({n} of {self.needed} {self.waits_for})"

    def tick(self) -> Outcome:
        """Retry a decision the pointer blocked; notice a pointer changed by someone else."""
        run = self.run
        if run is None:
            return Outcome()
        if run.decided is not None:
            return self._apply(run)
        try:
            state = self.pointer.get(self.model)
        except Exception:  # noqa: BLE001 - the next tick reads again
            return Outcome()
        if state is None:
            return Outcome()  # Redis lost it: nothing to tell until it is restored
        ended, clear = self._interrupted(run, state)
        if ended is not None:
            return ended
        if clear is not None:
            run.decided = clear
            return self._apply(run)
        return Outcome()

    def describe(self) -> dict[str, Any] | None:
        run = self.run
        if run is None:
            return None
        n, value = self._tally(run, run.version, self.route)
        n_live, live_value = self._tally(run, run.live, LIVE_ROUTE)
        return {
            "version": run.version,
            "live": run.live,
            "since_epoch": run.epoch,
            f"{self.slot}_examples": n,
            "needed": self.needed,
            "live_examples": n_live,
            "metric": self.config.promotion_metric,
            self.slot: value,
            "baseline": live_value,
            "decided": None if run.decided is None else run.decided["decision"],
            "blocked": run.blocked,
        }

    def counted(self, run: TrialRun) -> Outcome:
        """After the subclass fed an answer of the candidate: decide once there are enough."""
        n, _ = self._tally(run, run.version, self.route)
        if n < self.needed:
            return Outcome()
        run.decided = self._judged(run)
        return self._apply(run)

    # -- judging -----------------------------------------------------------

    def _tally(self, run: TrialRun, version: str, route: str) -> tuple[int, float | None]:
        """How many answers of ``(version, route)`` the metric was fed, and its value."""
        metric = self.config.promotion_metric
        routes = run.figures.snapshot()[self.model].get(version, {}).get("routes", {})
        figures = routes.get(route)
        if figures is None:
            return 0, None
        fed = figures["n"] - (figures["without_scores"] if metric in PROBA_METRICS else 0)
        value = figures["metrics"].get(f"{metric}_total")
        return fed, value if fed else None

    def _fields(self, run: TrialRun, decision: str, reason: str) -> dict[str, Any]:
        cfg = self.config.promotion
        n, value = self._tally(run, run.version, self.route)
        _, baseline = self._tally(run, run.live, LIVE_ROUTE)
        fields: dict[str, Any] = {
            "model": self.model,
            "version": run.version,
            "baseline_version": run.live,
            "judge": "gateway",
            "policy": self.policy,
            "decision": decision,
            "reason": reason,
            "checks": dict(run.checks),
            "metric": self.config.promotion_metric,
            "candidate": value,
            "baseline": baseline,
            "n": n,
            "allowance": cfg.tolerance,
            "min_examples": self.needed,
        }
        if value is not None and baseline is not None:
            fields["difference"] = J.difference(self.config.promotion_metric, value, baseline)
        return fields

    def note_loss(self, run: TrialRun, route: str, example: TrainingExample) -> None:
        """Record ``example``'s own loss under the promotion metric on ``route``, counted
        as the figures count it (nothing for a default label, no prediction, a refused
        label, or no scores for a probability metric)."""
        if example.label_is_default or example.prediction is None or self.rule is None:
            return
        try:
            score = score_served(self.rule, example)
        except SchemaError:
            return
        metric = self.config.promotion_metric
        answer = score.proba if metric in PROBA_METRICS else score.y_pred
        if answer is None:
            return
        loss = example_loss(metric, score.y_true, answer)  # as the holdout comparison's
        run.losses.setdefault(route, []).append(loss)

    def _judged(self, run: TrialRun) -> dict[str, Any]:
        cfg = self.config.promotion
        metric = self.config.promotion_metric
        n, value = self._tally(run, run.version, self.route)
        n_live, baseline = self._tally(run, run.live, LIVE_ROUTE)
        on = (
            f"on {n} {self.unit} (live: {n_live} {self.live_unit}) since the {self.slot} was"
            f" set at epoch {run.epoch}"
        )
        decision, done = self.passed()
        name = f"{self.slot} {run.version}"
        if value is None:  # not expected: the metric was fed `needed` answers
            reason = f"{name} has no {metric} value {on}; rejected, the {self.slot} cleared"
            return self._fields(run, "reject", reason)
        if baseline is None:
            summary = f"{name} {metric} {J.num(value)} {on}: live has no scored answer, no baseline"
            return self._fields(run, decision, f"{summary}; {done}")
        diff = J.difference(metric, value, baseline)
        ok = diff >= -cfg.tolerance
        summary = (
            f"{name} {metric} {J.num(value)} vs live {run.live} {J.num(baseline)} {on}:"
            f" difference {J.signed(diff)} ({J.direction(metric)} is better)"
            f" {'within' if ok else 'beyond'} the tolerance {cfg.tolerance:g}"
        )
        p = None
        if cfg.canary_confidence > 0 and run.losses:
            p = J.welch_worse(run.losses.get(self.route, []), run.losses.get(LIVE_ROUTE, []))
        if not ok and p is not None:
            significant = p <= 1.0 - cfg.canary_confidence
            summary += (
                f"; worse per example with p {p:.3g},"
                f" {'' if significant else 'not '}significant at {cfg.canary_confidence:g}"
            )
            ok = not significant
        fields = (
            self._fields(run, decision, f"{summary}; {done}")
            if ok
            else self._fields(run, "reject", f"{summary}; rejected, the {self.slot} cleared")
        )
        if p is not None:
            fields["p_value"] = p
        return fields

    def _interrupted(
        self, run: TrialRun, state: PointerState
    ) -> tuple[Outcome | None, dict[str, Any] | None]:
        """A pointer changed by someone else: the run's end, or a reject that clears the slot."""
        if state.live == run.version:
            log.info(
                "%s: the %s %s was promoted by someone else", self.model, self.slot, run.version
            )
            self.run = None
            return Outcome(), None
        if self.held(state) != run.version:
            reason = (
                f"the {self.slot} slot of {self.model} holds {self.held(state)} at epoch"
                f" {state.epoch} (changed by someone else) before {run.version} was judged on"
                f" its {self.unit}: not promoted"
            )
            self.run = None
            return Outcome(verdicts=[J.verdict(**self._fields(run, "reject", reason))]), None
        if state.live != run.live:
            reason = (
                f"live changed from {run.live} to {state.live} at epoch {state.epoch} while"
                f" {run.version} was the {self.slot}: no baseline any more; rejected, the"
                f" {self.slot} cleared (an operator can promote it)"
            )
            return None, self._fields(run, "reject", reason)
        return None, None

    def _applied(self, run: TrialRun, state: PointerState, decision: str) -> bool:
        """Whether ``decision``, sent before, is what the pointer shows."""
        if decision == "promote":
            return state.live == run.version
        if decision == "canary":
            return state.canary == run.version and state.live != run.version
        return self.held(state) != run.version

    def _apply(self, run: TrialRun) -> Outcome:
        """Make ``run.decided`` on the pointer: the pass, or the slot cleared."""
        stale = 0
        while True:
            try:
                state = self.pointer.get(self.model)
            except Exception as exc:  # noqa: BLE001 - any read failure: retried at tick
                return self._block(run, "reading the pointer", exc)
            if state is None:
                lost = PointerLostError(
                    "no pointer: run driftloop pointer restore", model=self.model
                )
                return self._block(run, "reading the pointer", lost)
            fields = run.decided
            assert fields is not None  # noqa: S101 - only called with a decision; guards no input
            passing = fields["decision"] != "reject"
            if run.sent and self._applied(run, state, fields["decision"]):
                return self._done(run, state, " (applied; Redis did not confirm it at first)")
            run.sent = False
            ended, clear = self._interrupted(run, state)
            if ended is not None:
                return ended
            if clear is not None:
                run.decided, fields, passing = clear, clear, False
            reason = J.cut(fields["reason"])
            try:
                if passing:
                    event = self.pass_change(run, reason, state.epoch)
                else:
                    event = self.clear(reason, state.epoch)
            except StaleEpochError as exc:
                stale += 1
                if stale < 2:
                    continue
                return self._block(run, "changing the pointer", exc)
            except (PointerLostError, PointerUnavailableError) as exc:
                run.sent = True
                return self._block(run, "changing the pointer", exc)
            except PointerError as exc:  # VersionRefusedError and other refusals
                if passing:
                    run.decided = {
                        **fields,
                        "decision": "reject",
                        "reason": f"{fields['reason']}; the pointer refused it: {exc};"
                        f" rejected, the {self.slot} cleared",
                    }
                    continue
                log.error(
                    "the pointer refused to clear the %s of %s: %s", self.slot, self.model, exc
                )
                return self._done(run, None, f" (clearing the {self.slot} was refused: {exc})")
            except Exception as exc:  # noqa: BLE001 - e.g. a raw client error: retried at tick
                run.sent = True
                return self._block(run, "changing the pointer", exc)
            return self._done(run, state_of(event), "")

    def _done(self, run: TrialRun, after: PointerState | None, note: str) -> Outcome:
        """The decision is made (``after``: the pointer its change left, None if none)."""
        assert run.decided is not None  # noqa: S101 - only called with a decision; guards no input
        if run.blocked is not None:
            log.info(
                "the pointer answers again; the %s %s of %s judged",
                self.slot,
                run.version,
                self.model,
            )
        self.run = None
        fields = {**run.decided, "reason": run.decided["reason"] + note}
        if after is None:
            return Outcome(verdicts=[J.verdict(**fields)])
        if fields["decision"] != "reject":
            self.after_pass(run, after)
        return Outcome(verdicts=[J.verdict(**fields, epoch=after.epoch)], changes=[after])

    def _block(self, run: TrialRun, doing: str, exc: Exception) -> Outcome:
        why = f"{doing}: {exc!r}" if not isinstance(exc, PointerError) else f"{doing}: {exc}"
        if run.blocked is None:
            log.warning(
                "the %s of the %s %s of %s waits for the pointer (retried each tick): %s",
                run.decided["decision"] if run.decided else "decision",
                self.slot,
                run.version,
                self.model,
                why,
            )
        run.blocked = why
        return Outcome()
