"""The gateway's shadow stage: a candidate answers live requests in the shadow slot first.

With ``promotion.shadow_examples`` > 0 (:class:`~services.learning.config.PromotionConfig`;
modes ``auto`` and ``canary``, with a live version) the gateway sets a
candidate that passed its sanity checks and holdout comparison as the
model's shadow (:mod:`services.validation.gateway`: decision ``shadow``) and
hands it to :class:`ShadowStage`, which follows it until it passes on or is
rejected. The model servers then answer every request with the shadow
version too, logging its answer (never returned); the joiner pairs each
shadow answer with the live answer and the label of the same request
(:class:`~schemas.events.ShadowScore`).

The rules
---------
- **What is counted.** Every ShadowScore of the model (:meth:`ShadowStage.on_score`,
  repeats already dropped by the agent) whose ``model_version`` is the
  shadow and ``live_version`` the live version it was set against, served
  on the live route (``live_route`` ``live`` or none; a canary's requests
  are not the live version's), from when the gateway set the shadow: its
  shadow answer on route ``shadow``, its live answer on route ``live``. So
  both are scored on the same requests: a drift in the traffic does not
  look like a difference between them. Each answer is scored as
  :class:`~services.validation.live_metrics.LiveMetrics` scores served
  predictions; labels the model refuses and, for ``log_loss`` or
  ``cross_entropy``, answers without scores are not counted.
- **Judged once there are** ``shadow_examples`` shadow answers: the
  promotion metric of the shadow against live's on the same requests, the
  same tolerance as every comparison. Not worse than ``-tolerance``: the
  policy goes on: ``auto`` promotes the shadow (the promotion empties the
  shadow slot), decision ``promote``; ``canary`` sets it as the canary at
  ``canary_percent`` (which moves it from the shadow slot, one pointer
  change), decision ``canary``, and the
  :class:`~services.validation.canary.CanaryStage` follows it from there.
  Worse: the shadow is cleared (``set_shadow(model, None)``), ``reject``.
  ``n`` is the number of shadow answers; ``checks`` are the candidate's
  holdout sanity checks.
- Changes by someone else, pointer errors and the process's memory follow
  the rules every trial follows (:mod:`services.validation.stage`). While
  the shadow stage runs, newer candidates wait (newest wins), as for a
  canary.
"""

from __future__ import annotations

from collections.abc import Callable

from schemas.events import ShadowScore, VersionEvent
from services.learning.config import ModelConfig
from services.pointer.base import PointerState, VersionPointer
from services.validation.judging import Outcome
from services.validation.live_metrics import SHADOW_ROUTE, LabelRule
from services.validation.stage import TrialRun, TrialStage

#: Called after a pass set the shadow as canary: (version, live, epoch, checks).
StartCanary = Callable[[str, str, int, dict[str, bool]], None]


class ShadowStage(TrialStage):
    """Follows one model's shadow (see the module docstring for the rules).

    ``then_canary`` starts the canary stage after a pass in ``canary`` mode.
    """

    slot = "shadow"
    route = SHADOW_ROUTE
    unit = "shadow answers"
    live_unit = "live answers to the same requests"
    waits_for = "shadow answers"

    def __init__(
        self,
        config: ModelConfig,
        pointer: VersionPointer,
        rule: LabelRule | None = None,
        *,
        then_canary: StartCanary | None = None,
    ) -> None:
        super().__init__(config, pointer, rule)
        self.then_canary = then_canary

    @classmethod
    def used(cls, config: ModelConfig) -> bool:
        cfg = config.promotion
        return cfg.shadow_examples > 0 and cfg.mode in ("auto", "canary")

    @property
    def needed(self) -> int:
        return self.config.promotion.shadow_examples

    @property
    def policy(self) -> str:
        return self.config.promotion.mode

    def held(self, state: PointerState) -> str | None:
        return state.shadow

    def passed(self) -> tuple[str, str]:
        cfg = self.config.promotion
        if cfg.mode == "canary":
            return "canary", (
                f"set as canary at {cfg.canary_percent:g}% of the traffic (judged after"
                f" {cfg.canary_examples} canary examples)"
            )
        return "promote", "promoted"

    def pass_change(self, run: TrialRun, reason: str, epoch: int) -> VersionEvent:
        cfg = self.config.promotion
        if cfg.mode == "canary":
            return self.pointer.set_canary(
                self.model,
                run.version,
                cfg.canary_percent,
                actor="gateway",
                reason=reason,
                expected_epoch=epoch,
            )
        return self.pointer.promote(
            self.model, run.version, actor="gateway", reason=reason, expected_epoch=epoch
        )

    def clear(self, reason: str, epoch: int) -> VersionEvent:
        return self.pointer.set_shadow(
            self.model, None, actor="gateway", reason=reason, expected_epoch=epoch
        )

    def after_pass(self, run: TrialRun, after: PointerState) -> None:
        if after.canary == run.version and self.then_canary is not None:
            self.then_canary(run.version, run.live, after.epoch, run.checks)

    def on_score(self, score: ShadowScore) -> Outcome:
        """Count ``score`` if it belongs to the run; decide once there are enough."""
        run = self.run
        if run is None or run.decided is not None or score.model != self.model:
            return Outcome()
        if (
            score.model_version != run.version
            or score.live_version != run.live
            or score.live_route == "canary"
        ):
            return Outcome()
        run.figures.update_shadow(score, with_live=True)
        return self.counted(run)
