"""The gateway's canary stage: a candidate served to a share of traffic, then judged on it.

In ``canary`` mode (:class:`~services.learning.config.PromotionConfig`) the
gateway sets a candidate that passed its holdout comparison as the model's
canary (:mod:`services.validation.gateway`) and hands it to
:class:`CanaryStage`, which follows it until it is promoted or rejected.

The rules
---------
- **What is counted.** Every attributed example of the model
  (:meth:`CanaryStage.on_example`, fed every ``training-examples`` record,
  held out or not) whose ``route`` is ``canary`` and ``model_version`` the
  canary, and every one whose ``route`` is ``live`` and ``model_version``
  the live version the canary was set against, from when the gateway set
  the canary. Other versions, shadow examples and examples without a route
  are not counted. Each is scored like :class:`~services.validation.live_metrics.LiveMetrics`
  scores served predictions (the logged ``prediction`` / ``scores`` against
  the label, with the trainer's label conversion): default labels, examples
  without a prediction, labels the model refuses, and, for ``log_loss`` or
  ``cross_entropy``, examples without scores are not counted.
- **Judged once there are** ``canary_examples`` canary examples: the
  promotion metric over all of them against the live version's over its
  live-route examples of the same period. ``difference`` is canary minus
  live in the metric's better direction; not worse than ``-tolerance``:
  promoted through the pointer (actor ``gateway``; the promotion clears the
  canary slot, as the canary is the version promoted), decision ``promote``;
  else — and, with ``canary_confidence`` above 0, when the canary is also
  worse at that confidence by the one-sided Welch test of the two routes'
  per-example losses (:func:`~services.validation.judging.welch_worse`; a
  difference within the sample's noise promotes it: it passed the
  same-request holdout comparison, and the guard watches it once live) — the
  canary is cleared (``set_canary(model, None)``), decision ``reject``; the
  verdict's ``p_value`` is the test's. A live version with no counted example is no baseline: the
  canary is promoted on its own figures. ``n`` is the number of canary
  examples; ``checks`` are the candidate's holdout sanity checks.
- **Changed by someone else** (noticed at the decision, or at each tick):
  the canary promoted: the run ends without a verdict; the canary slot
  cleared or given to another version: ``reject`` (nothing to clear); the
  live version changed under it (an operator, or the guard's rollback): the
  baseline is gone, the canary is cleared and ``reject``.
- **Pointer errors.** A stale epoch: the pointer is read again and the
  change retried at once (once), then at tick. Redis unavailable, a lost
  pointer or an unexpected error: the decision stands and is retried at each
  tick (:meth:`CanaryStage.tick`); a change that applied although its reply
  was lost gets its verdict then. The pointer refusing to promote the canary
  (e.g. it no longer verifies): ``reject``, the canary cleared.
- **The process's memory.** The run lives in this object: a gateway that
  restarts while a canary it set runs does not follow it again; the canary
  stays in the pointer until an operator promotes or clears it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from schemas.errors import SchemaError
from schemas.events import TrainingExample
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
from services.validation.judging import Outcome
from services.validation.live_metrics import (
    PROBA_METRICS,
    LabelRule,
    LiveMetrics,
    label_rule,
    score_served,
)

log = logging.getLogger(__name__)

#: The routes an example of a canary run is counted on.
CANARY_ROUTE, LIVE_ROUTE = "canary", "live"


@dataclass
class CanaryRun:
    """A canary being followed: the candidate, the live version it is compared with.

    ``decided`` holds the verdict fields of a decision not yet applied to the
    pointer (``blocked`` says why); ``sent`` that the change was tried and
    its outcome is unknown.
    """

    version: str
    live: str
    epoch: int  # the pointer's epoch after the canary was set
    checks: dict[str, bool]
    figures: LiveMetrics
    decided: dict[str, Any] | None = None
    blocked: str | None = None
    sent: bool = False
    #: Each counted example's own loss under the promotion metric, by route.
    losses: dict[str, list[float]] = field(
        default_factory=lambda: {CANARY_ROUTE: [], LIVE_ROUTE: []}
    )


class CanaryStage:
    """Follows one model's canary (see the module docstring for the rules).

    Parameters
    ----------
    config
        The model's configuration (``promotion``, ``promotion_metric``).
    pointer
        Reads and changes the model's pointer.
    rule
        The model's label conversion; default
        :func:`~services.validation.live_metrics.label_rule` of ``config``,
        built only in ``canary`` mode.
    """

    def __init__(
        self, config: ModelConfig, pointer: VersionPointer, rule: LabelRule | None = None
    ) -> None:
        self.config = config
        self.model = config.name
        self.pointer = pointer
        self.rule = rule
        if rule is None and config.promotion.mode == "canary":
            self.rule = label_rule(config)
        self.run: CanaryRun | None = None

    def start(self, version: str, live: str, epoch: int, checks: dict[str, bool]) -> None:
        """``version`` was set as canary against ``live`` (the pointer at ``epoch``)."""
        assert self.rule is not None  # noqa: S101 - built in canary mode; guards no input
        figures = LiveMetrics({self.model: self.config}, rules={self.model: self.rule})
        self.run = CanaryRun(version, live, epoch, dict(checks), figures)

    def waiting(self) -> str | None:
        """Why a newer candidate must wait, or None (no canary is running)."""
        run = self.run
        if run is None:
            return None
        if run.decided is not None:
            return (
                f"the canary {run.version} was judged ({run.decided['decision']}); the pointer"
                f" change waits: {run.blocked}"
            )
        n, _ = self._tally(run, run.version, CANARY_ROUTE)
        needed = self.config.promotion.canary_examples
        return f"the canary {run.version} is running ({n} of {needed} canary examples)"

    def on_example(self, example: TrainingExample) -> Outcome:
        """Count ``example`` if it belongs to the run; decide once there are enough."""
        run = self.run
        if run is None or run.decided is not None or example.model != self.model:
            return Outcome()
        route, version = example.route, example.model_version
        if not (
            (route == CANARY_ROUTE and version == run.version)
            or (route == LIVE_ROUTE and version == run.live)
        ):
            return Outcome()
        run.figures.update(example)
        loss = self._loss(example)
        if loss is not None:
            run.losses[route].append(loss)
        if route != CANARY_ROUTE:
            return Outcome()
        n, _ = self._tally(run, run.version, CANARY_ROUTE)
        if n < self.config.promotion.canary_examples:
            return Outcome()
        run.decided = self._judged(run)
        return self._apply(run)

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
        n, value = self._tally(run, run.version, CANARY_ROUTE)
        n_live, live_value = self._tally(run, run.live, LIVE_ROUTE)
        return {
            "version": run.version,
            "live": run.live,
            "since_epoch": run.epoch,
            "percent": self.config.promotion.canary_percent,
            "canary_examples": n,
            "needed": self.config.promotion.canary_examples,
            "live_examples": n_live,
            "metric": self.config.promotion_metric,
            "canary": value,
            "baseline": live_value,
            "decided": None if run.decided is None else run.decided["decision"],
            "blocked": run.blocked,
        }

    # -- judging -----------------------------------------------------------

    def _tally(self, run: CanaryRun, version: str, route: str) -> tuple[int, float | None]:
        """How many examples of ``(version, route)`` the metric was fed, and its value."""
        metric = self.config.promotion_metric
        routes = run.figures.snapshot()[self.model].get(version, {}).get("routes", {})
        figures = routes.get(route)
        if figures is None:
            return 0, None
        fed = figures["n"] - (figures["without_scores"] if metric in PROBA_METRICS else 0)
        value = figures["metrics"].get(f"{metric}_total")
        return fed, value if fed else None

    def _loss(self, example: TrainingExample) -> float | None:
        """The example's own loss under the promotion metric, counted as the figures count
        it (None where they do not: default label, no prediction, refused label, no scores
        for a probability metric)."""
        if example.label_is_default or example.prediction is None or self.rule is None:
            return None
        try:
            score = score_served(self.rule, example)
        except SchemaError:
            return None
        metric = self.config.promotion_metric
        if metric in PROBA_METRICS:
            return score.loss if score.proba is not None else None
        if metric == "rmse":
            return score.error * score.error
        return score.error  # accuracy: 0 / 1; mae: the absolute error

    def _fields(self, run: CanaryRun, decision: str, reason: str) -> dict[str, Any]:
        cfg = self.config.promotion
        n, value = self._tally(run, run.version, CANARY_ROUTE)
        _, baseline = self._tally(run, run.live, LIVE_ROUTE)
        fields: dict[str, Any] = {
            "model": self.model,
            "version": run.version,
            "baseline_version": run.live,
            "judge": "gateway",
            "policy": "canary",
            "decision": decision,
            "reason": reason,
            "checks": dict(run.checks),
            "metric": self.config.promotion_metric,
            "candidate": value,
            "baseline": baseline,
            "n": n,
            "allowance": cfg.tolerance,
            "min_examples": cfg.canary_examples,
        }
        if value is not None and baseline is not None:
            fields["difference"] = J.difference(self.config.promotion_metric, value, baseline)
        return fields

    def _judged(self, run: CanaryRun) -> dict[str, Any]:
        cfg = self.config.promotion
        metric = self.config.promotion_metric
        n, value = self._tally(run, run.version, CANARY_ROUTE)
        n_live, baseline = self._tally(run, run.live, LIVE_ROUTE)
        on = (
            f"on {n} canary-route examples (live: {n_live} live-route examples) since"
            f" the canary was set at epoch {run.epoch}"
        )
        if value is None:  # not expected: the metric was fed canary_examples examples
            reason = (
                f"canary {run.version} has no {metric} value {on}; rejected, the canary cleared"
            )
            return self._fields(run, "reject", reason)
        if baseline is None:
            summary = (
                f"canary {run.version} {metric} {J.num(value)} {on}: live has no scored"
                " example, no baseline"
            )
            return self._fields(run, "promote", f"{summary}; promoted")
        diff = J.difference(metric, value, baseline)
        beyond = diff < -cfg.tolerance
        summary = (
            f"canary {run.version} {metric} {J.num(value)} vs live {run.live}"
            f" {J.num(baseline)} {on}: difference {J.signed(diff)} ({J.direction(metric)}"
            f" is better) {'beyond' if beyond else 'within'} the tolerance {cfg.tolerance:g}"
        )
        p = None
        if cfg.canary_confidence > 0:
            p = J.welch_worse(run.losses[CANARY_ROUTE], run.losses[LIVE_ROUTE])
        if beyond and p is not None:
            significant = p <= 1.0 - cfg.canary_confidence
            summary += (
                f"; worse per example with p {p:.3g},"
                f" {'' if significant else 'not '}significant at {cfg.canary_confidence:g}"
            )
            beyond = significant
        verdict = (
            self._fields(run, "reject", f"{summary}; rejected, the canary cleared")
            if beyond
            else self._fields(run, "promote", f"{summary}; promoted")
        )
        if p is not None:
            verdict["p_value"] = p
        return verdict

    def _interrupted(
        self, run: CanaryRun, state: PointerState
    ) -> tuple[Outcome | None, dict[str, Any] | None]:
        """A pointer changed by someone else: the run's end, or a reject that clears the canary."""
        if state.live == run.version:
            log.info("%s: the canary %s was promoted by someone else", self.model, run.version)
            self.run = None
            return Outcome(), None
        if state.canary != run.version:
            reason = (
                f"the canary slot of {self.model} holds {state.canary} at epoch {state.epoch}"
                f" (changed by someone else) before {run.version} was judged on canary"
                " traffic: not promoted"
            )
            self.run = None
            return Outcome(verdicts=[J.verdict(**self._fields(run, "reject", reason))]), None
        if state.live != run.live:
            reason = (
                f"live changed from {run.live} to {state.live} at epoch {state.epoch} while"
                f" {run.version} was the canary: no baseline any more; rejected, the canary"
                " cleared (an operator can promote it)"
            )
            return None, self._fields(run, "reject", reason)
        return None, None

    def _apply(self, run: CanaryRun) -> Outcome:
        """Make ``run.decided`` on the pointer: promote the canary, or clear it."""
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
            promote = fields["decision"] == "promote"
            if run.sent and (state.live == run.version if promote else state.canary != run.version):
                return self._done(run, state, " (applied; Redis did not confirm it at first)")
            run.sent = False
            ended, clear = self._interrupted(run, state)
            if ended is not None:
                return ended
            if clear is not None:
                run.decided, fields, promote = clear, clear, False
            reason = J.cut(fields["reason"])
            try:
                if promote:
                    event = self.pointer.promote(
                        self.model,
                        run.version,
                        actor="gateway",
                        reason=reason,
                        expected_epoch=state.epoch,
                    )
                else:
                    event = self.pointer.set_canary(
                        self.model, None, actor="gateway", reason=reason, expected_epoch=state.epoch
                    )
            except StaleEpochError as exc:
                stale += 1
                if stale < 2:
                    continue
                return self._block(run, "changing the pointer", exc)
            except (PointerLostError, PointerUnavailableError) as exc:
                run.sent = True
                return self._block(run, "changing the pointer", exc)
            except PointerError as exc:  # VersionRefusedError and other refusals
                if promote:
                    run.decided = {
                        **fields,
                        "decision": "reject",
                        "reason": f"{fields['reason']}; the pointer refused it: {exc};"
                        " rejected, the canary cleared",
                    }
                    continue
                log.error("the pointer refused to clear the canary of %s: %s", self.model, exc)
                return self._done(run, None, f" (clearing the canary was refused: {exc})")
            except Exception as exc:  # noqa: BLE001 - e.g. a raw client error: retried at tick
                run.sent = True
                return self._block(run, "changing the pointer", exc)
            return self._done(run, state_of(event), "")

    def _done(self, run: CanaryRun, after: PointerState | None, note: str) -> Outcome:
        """The decision is made (``after``: the pointer its change left, None if none)."""
        assert run.decided is not None  # noqa: S101 - only called with a decision; guards no input
        if run.blocked is not None:
            log.info(
                "the pointer answers again; the canary %s of %s judged", run.version, self.model
            )
        self.run = None
        fields = {**run.decided, "reason": run.decided["reason"] + note}
        if after is None:
            return Outcome(verdicts=[J.verdict(**fields)])
        return Outcome(verdicts=[J.verdict(**fields, epoch=after.epoch)], changes=[after])

    def _block(self, run: CanaryRun, doing: str, exc: Exception) -> Outcome:
        why = f"{doing}: {exc!r}" if not isinstance(exc, PointerError) else f"{doing}: {exc}"
        if run.blocked is None:
            log.warning(
                "the %s of the canary %s of %s waits for the pointer (retried each tick): %s",
                run.decided["decision"] if run.decided else "decision",
                run.version,
                self.model,
                why,
            )
        run.blocked = why
        return Outcome()
