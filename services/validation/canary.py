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
  live-route examples of the same period. Not worse than ``-tolerance``:
  promoted through the pointer (actor ``gateway``; the promotion clears the
  canary slot, as the canary is the version promoted), decision ``promote``;
  else — and, with ``canary_confidence`` above 0, only when the canary is
  also worse at that confidence by the one-sided Welch test of the two
  routes' per-example losses (different requests: unpaired; see
  :mod:`services.validation.stage`) — the canary is cleared
  (``set_canary(model, None)``), decision ``reject``. ``n`` is the number of
  canary examples; ``checks`` are the candidate's holdout sanity checks.
- Changes by someone else, pointer errors and the process's memory follow
  the rules every trial follows (:mod:`services.validation.stage`); e.g. a
  live version changed under the canary (an operator, or the guard's
  rollback) clears it: ``reject``.
"""

from __future__ import annotations

from typing import Any

from schemas.events import TrainingExample, VersionEvent
from services.learning.config import ModelConfig
from services.pointer.base import PointerState
from services.validation.judging import Outcome
from services.validation.stage import LIVE_ROUTE, TrialRun, TrialStage

#: The route an example of a canary run is counted on (live ones on ``LIVE_ROUTE``).
CANARY_ROUTE = "canary"


class CanaryStage(TrialStage):
    """Follows one model's canary (see the module docstring for the rules)."""

    slot = "canary"
    route = CANARY_ROUTE
    unit = "canary-route examples"
    live_unit = "live-route examples"
    waits_for = "canary examples"

    @classmethod
    def used(cls, config: ModelConfig) -> bool:
        return config.promotion.mode == "canary"

    @property
    def needed(self) -> int:
        return self.config.promotion.canary_examples

    @property
    def policy(self) -> str:
        return "canary"

    def held(self, state: PointerState) -> str | None:
        return state.canary

    def passed(self) -> tuple[str, str]:
        return "promote", "promoted"

    def pass_change(self, run: TrialRun, reason: str, epoch: int) -> VersionEvent:
        return self.pointer.promote(
            self.model, run.version, actor="gateway", reason=reason, expected_epoch=epoch
        )

    def clear(self, reason: str, epoch: int) -> VersionEvent:
        return self.pointer.set_canary(
            self.model, None, actor="gateway", reason=reason, expected_epoch=epoch
        )

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
        self.note_loss(run, route, example)
        if route != CANARY_ROUTE:
            return Outcome()
        return self.counted(run)

    def describe(self) -> dict[str, Any] | None:
        described = super().describe()
        if described is not None:
            described["percent"] = self.config.promotion.canary_percent
        return described
