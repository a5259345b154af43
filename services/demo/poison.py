"""The demo's poisoned checkpoint: a version that verifies but predicts the wrong class.

:func:`write_poisoned` trains a fresh copy of the model on recent joined
examples with their labels inverted and writes it through the project's own
signing checkpointer (:class:`~services.checkpoints.checkpointer.Checkpointer`
over :class:`~services.checkpoints.store.CheckpointStore`, the writer the
trainer uses), so its manifest is signed and every hash is right: the
gateway must refuse it for its figures, not for its signature. Its
CheckpointEvent is published the way the trainer publishes one; the version
id is reserved under the store's per-model lock, so it cannot collide with
the worker's own checkpoints. The store is opened as every writer opens it
(:func:`~services.checkpoints.opener.open_store`: the model's retention table
and the version pointer's references), because a save prunes: opened bare,
its GC kept only what the store's defaults say and deleted the live version's
rollback target under the demo's feet.

:class:`PoisonPlay` is the demo's scene around it, one step per refresh:
offer the poisoned checkpoint when it is due, force it live as an operator
once the gateway has refused it, and note the guard's rollback.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from schemas.codec import encode
from schemas.events import CheckpointEvent, Features
from services.checkpoints.checkpointer import Checkpointer, CheckpointerConfig
from services.checkpoints.config import StoreConfig
from services.checkpoints.opener import open_store
from services.checkpoints.retention import ReferenceSource
from services.learning.config import LearningConfig, ModelConfig
from services.learning.metrics import bigger_is_better
from services.learning.pool import checkpoint_event
from services.learning.store_sink import CheckpointerSink
from services.learning.synthetic import LocalExample
from services.learning.trainer import OnlineTrainer
from services.pointer.factory import references_from_env

if TYPE_CHECKING:
    from kafka import KafkaProducer

    from services.demo.promoter import DemoPromoter
    from services.demo.traffic import TrafficConfig
    from services.demo.view import DemoView

#: The reason recorded in the poisoned checkpoint's manifest.
REASON = "demo: trained on inverted labels, to show the gateway and the guard"
#: Joined examples (after any drift) the poisoned checkpoint is trained on, at least.
TRAINED_ON = 200
#: How well the live version must score on recent held-out traffic before the
#: poisoned checkpoint is offered (accuracy-like metrics; losses: GOOD_LOSS).
GOOD_SCORE = 0.6
GOOD_LOSS = 0.6
#: How often a poisoned checkpoint is offered when a newer trainer checkpoint
#: supersedes it before the gateway judged it.
MAX_OFFERS = 5
#: Actor of the demo's forced promotion of the poisoned checkpoint.
OPERATOR = "operator"


def write_poisoned(
    store: StoreConfig,
    config: ModelConfig,
    examples: Sequence[tuple[Features, bool]],
    *,
    references: ReferenceSource | None,
) -> CheckpointEvent:
    """Write the poisoned checkpoint of ``config``'s model; its CheckpointEvent.

    ``examples`` are ``(features, label)`` pairs with boolean labels (the
    demo's SEA traffic); each is learned with the opposite label.
    ``references``: the version pointer (its live, canary, shadow and rollback
    history are never pruned by this save's GC); None only where no pointer
    exists.
    """
    writer = open_store(store, LearningConfig(model=(config,)), references=references)
    checkpointer = Checkpointer(writer, CheckpointerConfig(async_saves=False))
    trainer = OnlineTrainer(config, CheckpointerSink(checkpointer))
    try:
        for offset, (features, label) in enumerate(examples):
            local = LocalExample(f"poison-{offset}", config.name, dict(features), not label)
            trainer.process(local, topic="demo-poison", partition=0, offset=offset)
        record = trainer.checkpoint("manual", REASON)
        location = writer.hot.location(config.name, record.version)
    finally:
        checkpointer.close()
        writer.close()
    return checkpoint_event(record.manifest, location)


class PoisonPlay:
    """The poisoned checkpoint's scene in the demo; its story is ``view.poison``."""

    def __init__(
        self,
        config: ModelConfig,
        traffic: TrafficConfig,
        *,
        poison_after: int,
        store: StoreConfig,
        producer: KafkaProducer,
        topic: str,
        promoter: DemoPromoter,
    ) -> None:
        self.config = config
        self.traffic = traffic
        self.poison_after = poison_after
        self.store = store
        self.producer = producer
        self.topic = topic
        self.promoter = promoter
        self.started = time.monotonic()

    def due(self, view: DemoView, left: int) -> bool:
        """Once the gateway has made its promotions and both servers apply the
        last one (a candidate may be waiting at the gateway: the gateway compares
        a candidate with live on arrival and refuses one that fails at once, so
        the poison is not superseded), long enough after any drift that the poison is trained on
        the current concept, while enough traffic is left for the guard's
        sample (twice ``guard.min_examples`` held-out requests), and once the
        guard has kept the live version with a good score."""
        by_gateway = [c for c in view.promotions if c.event.actor == "gateway"]
        if len(by_gateway) < self.poison_after or not view.converged:
            return False
        pointer = view.pointer
        if pointer is None or pointer.live is None:
            return False
        drift = self.traffic.drift_at
        # feedback comes up to 2 s late, so joins run some hundred requests out of
        # order: well past the drift, the newest joined examples are all after it
        if drift < self.traffic.requests and view.examples < drift + 3 * TRAINED_ON:
            return False
        needed = self.config.guard.min_examples * 100 / self.config.promotion.holdout_percent
        if left < 2 * needed or len(view.recent) < TRAINED_ON:
            return False
        return self._live_is_good(view, pointer.live)

    def _live_is_good(self, view: DemoView, live: str) -> bool:
        """The guard has judged the live version on the traffic since its
        promotion (so the gateway judges a new candidate at once instead of
        holding it), and kept it with a good score (accuracy-like metrics at
        least :data:`GOOD_SCORE`, losses at most :data:`GOOD_LOSS`): it has
        learned the current concept, so a model trained on that concept's
        inverted labels is plainly worse. (Right after a drift every version
        scores badly, and a poisoned copy of the new concept's opposite could
        even look better.)"""
        kept = [
            v
            for v in view.verdicts
            if v.version == live and v.judge == "guard" and v.decision == "keep"
        ]
        if not kept or kept[-1].metric is None or kept[-1].candidate is None:
            return False
        value = kept[-1].candidate
        if bigger_is_better(kept[-1].metric):
            return value >= GOOD_SCORE
        return value <= GOOD_LOSS

    def step(self, view: DemoView, left: int) -> None:
        """Offer the poisoned checkpoint, force it live once the gateway refused
        it, note the guard's rollback."""
        story = view.poison
        if "version" not in story:
            if self.due(view, left):
                recent = list(view.recent)[-TRAINED_ON:]
                pairs = [(e.features, bool(e.label)) for e in recent]
                references = references_from_env(
                    self.store,
                    self.promoter.redis,
                    kafka=self.promoter.kafka,
                    topics=self.promoter.topics,
                )
                event = write_poisoned(self.store, self.config, pairs, references=references)
                self.producer.send(self.topic, key=self.config.name.encode(), value=encode(event))
                self.producer.flush()
                story |= {"version": event.version, "offered_at_s": self._at()}
                view.enter("a poisoned checkpoint offered to the gateway")
            return
        version = story["version"]
        if "verdict" not in story:
            verdict = view.verdict_on(version)
            if verdict is None:
                return
            if verdict.decision == "superseded" and story.get("offers", 1) < MAX_OFFERS:
                # a trainer checkpoint came first and took its turn: offer it again
                offers = story.get("offers", 1) + 1
                story.clear()
                story["offers"] = offers
                view.enter("the poisoned checkpoint was superseded: offered again when due")
                return
            story |= {"verdict": verdict.decision, "verdict_reason": verdict.reason}
            if verdict.decision != "reject":
                return  # promoted, held or superseded for good: nothing to force
            reason = (
                f"{OPERATOR} forces {version} live against the gateway's verdict, to show the guard"
            )
            forced = self.promoter.promote(self.config.name, version, reason, actor=OPERATOR)
            story |= {"forced_epoch": forced.epoch, "forced_at_s": self._at()}
            view.enter("poisoned version forced live: the guard is watching it")
            return
        if "forced_epoch" in story and "rolled_back_epoch" not in story:
            for change in view.rollbacks:
                e = change.event
                if e.actor == "guard" and e.from_live == version:
                    story |= {"rolled_back_epoch": e.epoch, "rolled_back_at_s": self._at()}
                    view.enter("the guard rolled the poisoned version back")
        if "rolled_back_epoch" in story and "guard_n" not in story:
            # its verdict travels on another topic: it may be read after the change
            guard = view.verdict_on(version, judge="guard")
            if guard is not None and guard.decision == "rollback":
                story |= {"guard_n": guard.n, "guard_reason": guard.reason}

    def _at(self) -> float:
        return round(time.monotonic() - self.started, 2)
