"""The validation gateway and the guard as a faust agent (``driftloop worker --role gateway``).

Faust wiring only (STYLE.md: agents decode, call a service, emit): the
decisions live in :class:`services.validation.service.Validation`. Three
agents feed it, all on one executor thread (model loads and scoring never
run on the event loop, and the service is never called concurrently):

- ``training-examples``, in chunks: every example goes to
  :meth:`~services.validation.service.Validation.on_example` (held-out ones
  fill the model's holdout buffer, which may complete a waiting candidate's
  or the guard's sample), and to the per-version live metrics;
- ``checkpoint-events``: each CheckpointEvent is a candidate
  (:meth:`~services.validation.service.Validation.on_checkpoint`);
- ``shadow-scores``, in chunks: each ShadowScore the joiner emitted (a
  shadow prediction paired with the live answer and the label of the same
  request), repeats dropped by ``event_id`` (the last 100,000), goes to the
  live metrics (route ``shadow`` of the shadow version) and to
  :meth:`~services.validation.service.Validation.on_shadow_score` (the
  gateway's shadow stage).

A timer calls :meth:`~services.validation.service.Validation.tick` every
``tick_interval_s`` (pointer changes made by others, retries, cooldowns)
and renders the Prometheus text (:meth:`GatewayAgent.render_metrics`) that
the worker serves at ``/metrics`` when ``DRIFTLOOP_WORKER_METRICS_PORT`` is set.
Every verdict returned is published to ``verdicts`` (topic and key by type,
:class:`~services.publish.faust.FaustPublisher`) and logged; after a verdict
that changed the pointer, the pointer's outbox is relayed to
``version-events`` at once (the worker's relay timer would copy it within
seconds anyway).

The gateway runs in its own process and consumer group, not in ``--role
all``: the trainer seeks ``training-examples`` to its checkpoints' offsets at
every assignment, which would move this agent's reading too. Its holdout
buffers and guard state are in memory: after a restart they fill again from
new examples (a candidate waits for ``min_examples`` of them).

A malformed CheckpointEvent goes to ``dead-letters`` with the reason; a
malformed training example is counted and skipped (the trainer, which reads
the same record, dead-letters it); so is a malformed shadow score (only the
joiner writes them).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import faust

from schemas.events import CheckpointEvent, DeadLetter, ShadowScore, TrainingExample, Verdict
from services.config import TopicsConfig
from services.deadletters import RawRecord, decode_or_dead_letter
from services.publish.faust import FaustPublisher
from services.validation.base import RecentIds
from services.validation.live_metrics import LiveMetrics
from services.validation.service import Validation

log = logging.getLogger(__name__)

E = TypeVar("E")


class GatewayAgent:
    """The gateway's agents and timer on a faust app.

    Parameters
    ----------
    app
        The faust app (its id is the gateway's consumer group).
    topics
        Topic names.
    validation
        The gateway and guard of every configured model.
    live_metrics
        Per-version metrics on live traffic, fed every example (None: not kept).
    on_change
        Called (on the executor thread) after a verdict changed the pointer:
        the relay of the pointer outbox. None: the worker's relay timer copies it.
    publish_metrics
        Called on the executor thread at every tick: publishes the live metrics
        (their Redis hash, rate-limited by the callee). None: not published.
    """

    def __init__(
        self,
        app: faust.App,
        topics: TopicsConfig,
        validation: Validation,
        *,
        live_metrics: LiveMetrics | None = None,
        on_change: Callable[[], object] | None = None,
        publish_metrics: Callable[[], object] | None = None,
        tick_interval_s: float = 1.0,
        chunk: int = 500,
        chunk_wait_s: float = 0.05,
    ) -> None:
        self.app = app
        self.topics = topics
        self.validation = validation
        self.live_metrics = live_metrics
        self.on_change = on_change
        self.publish_metrics = publish_metrics
        self.chunk = chunk
        self.chunk_wait_s = chunk_wait_s
        self.malformed_examples = 0
        self.malformed_shadow_scores = 0
        self.repeated_shadow_scores = 0
        self.shadow_ids = RecentIds()
        self.verdicts = 0
        #: The last :meth:`render_metrics`, for the worker's ``/metrics`` endpoint.
        self.metrics_text = b""
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="gateway")
        self.publisher = FaustPublisher(app, topics)
        raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw"}
        examples = app.topic(topics.training_examples, value_serializer="raw", **raw)
        candidates = app.topic(topics.checkpoint_events, value_serializer="raw", **raw)
        shadows = app.topic(topics.shadow_scores, value_serializer="raw", **raw)
        app.agent(examples, name="gateway-holdout")(self._examples)
        app.agent(candidates, name="gateway-candidates")(self._candidates)
        app.agent(shadows, name="gateway-shadow-scores")(self._shadow_scores)
        app.timer(tick_interval_s, name="gateway-tick")(self._tick)
        app.on_before_shutdown.connect(self._on_shutdown)

    async def _run(self, call: Callable[..., list[E]], *args: Any) -> list[E]:
        """``call`` on the executor thread; a failure is logged and yields nothing
        (a bug must not stop the agent: faust would not restart it)."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, call, *args)
        except Exception:
            log.exception("gateway: %s failed; what it was handling gets no verdict", call.__name__)
            return []

    async def _examples(self, stream: Any) -> Any:
        async for events in stream.take_events(self.chunk, within=self.chunk_wait_s):
            records = [RawRecord.of(event.message) for event in events]
            verdicts = await self._run(self.handle_examples, records)
            await self._emit(verdicts)
            yield None

    async def _shadow_scores(self, stream: Any) -> Any:
        async for events in stream.take_events(self.chunk, within=self.chunk_wait_s):
            records = [RawRecord.of(event.message) for event in events]
            verdicts = await self._run(self.handle_shadow_scores, records)
            await self._emit(verdicts)
            yield None

    async def _candidates(self, stream: Any) -> Any:
        async for event in stream.events():
            record = RawRecord.of(event.message)
            await self._emit(await self._run(self.handle_candidate, record))
            yield None

    async def _tick(self, *_app: Any) -> None:
        verdicts = await self._run(self.handle_tick)
        await self._emit(verdicts)

    def handle_examples(self, records: Sequence[RawRecord]) -> list[Verdict]:
        """Decode and account for a chunk of training examples (executor thread)."""
        out: list[Verdict] = []
        for record in records:
            example = decode_or_dead_letter(TrainingExample, record)
            if isinstance(example, DeadLetter):
                self.malformed_examples += 1
                continue
            if self.live_metrics is not None:
                self.live_metrics.update(example)
            out += self.validation.on_example(example)
        return self._after(out)

    def handle_shadow_scores(self, records: Sequence[RawRecord]) -> list[Verdict]:
        """Decode and account for a chunk of shadow scores, dropping repeats (executor thread)."""
        out: list[Verdict] = []
        for record in records:
            score = decode_or_dead_letter(ShadowScore, record)
            if isinstance(score, DeadLetter):
                self.malformed_shadow_scores += 1
                continue
            if not self.shadow_ids.add(score.event_id):
                self.repeated_shadow_scores += 1
                continue
            if self.live_metrics is not None:
                self.live_metrics.update_shadow(score)
            out += self.validation.on_shadow_score(score)
        return self._after(out)

    def handle_candidate(self, record: RawRecord) -> list[Verdict | DeadLetter]:
        """Decode and judge one CheckpointEvent (executor thread)."""
        event = decode_or_dead_letter(CheckpointEvent, record)
        if isinstance(event, DeadLetter):
            log.warning("gateway: malformed checkpoint event dead-lettered: %s", event.error)
            return [event]
        return list(self._after(self.validation.on_checkpoint(event)))

    def handle_tick(self) -> list[Verdict]:
        """The timer's work (executor thread); renders :attr:`metrics_text` too."""
        verdicts = self._after(self.validation.tick())
        self.metrics_text = self.render_metrics().encode()
        if self.publish_metrics is not None:
            try:
                self.publish_metrics()
            except Exception:  # Redis down: the next tick publishes again
                log.exception("gateway: publishing live metrics failed")
        return verdicts

    def render_metrics(self) -> str:
        """Prometheus text: the live metrics, and per model the verdicts by
        decision and the holdout buffer's size (call on the executor thread)."""
        lines = [
            "# TYPE driftloop_gateway_verdicts_total counter",
            "# TYPE driftloop_gateway_holdout_examples gauge",
            "# TYPE driftloop_gateway_malformed_examples_total counter",
            "# TYPE driftloop_gateway_malformed_shadow_scores_total counter",
            "# TYPE driftloop_gateway_repeated_shadow_scores_total counter",
        ]
        for model, state in sorted(self.validation.describe()["models"].items()):
            for decision, count in sorted(state["verdicts"].items()):
                labels = f'model="{model}",decision="{decision}"'
                lines.append(f"driftloop_gateway_verdicts_total{{{labels}}} {count}")
            size = state["holdout"]["size"]
            lines.append(f'driftloop_gateway_holdout_examples{{model="{model}"}} {size}')
        lines.append(f"driftloop_gateway_malformed_examples_total {self.malformed_examples}")
        lines.append(
            f"driftloop_gateway_malformed_shadow_scores_total {self.malformed_shadow_scores}"
        )
        lines.append(
            f"driftloop_gateway_repeated_shadow_scores_total {self.repeated_shadow_scores}"
        )
        live = self.live_metrics.prometheus_text() if self.live_metrics is not None else ""
        return "\n".join(lines) + "\n" + live

    def _after(self, verdicts: list[Verdict]) -> list[Verdict]:
        if self.on_change is not None and any(v.epoch is not None for v in verdicts):
            try:
                self.on_change()
            except Exception:  # the change stands; the relay timer copies it later
                log.exception("gateway: relaying the pointer change failed")
        return verdicts

    async def _emit(self, events: Sequence[Verdict | DeadLetter]) -> None:
        for event in events:
            if isinstance(event, Verdict):
                self.verdicts += 1
                log.info(
                    "verdict %s %s: %s (%s)",
                    event.model,
                    event.version,
                    event.decision,
                    event.reason,
                )
            await self.publisher.send(event)

    async def _on_shutdown(self, sender: Any, /, *args: Any, **kwargs: Any) -> None:
        """Called by faust when the app stops: wait for the executor, flush verdicts."""
        self._executor.shutdown(wait=True)
        try:
            await self.publisher.aflush(timeout_s=30.0)
        except Exception:
            log.exception("gateway: verdicts not acknowledged at shutdown")
        log.info("gateway stopped: %s", self.validation.describe())
