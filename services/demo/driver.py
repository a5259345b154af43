"""Carrying out the demo's traffic plan on the wall clock, over HTTP and Kafka.

:class:`TrafficDriver` walks a :func:`~services.demo.traffic.plan` one
:meth:`~TrafficDriver.step` at a time (the runner interleaves its own work
between steps):

- requests are paced ``interval_ms`` apart and sent as predict calls of up to
  ``batch`` instances, alternating between the model servers (keep-alive
  ``httpx`` clients); the servers log the inference logs themselves;
- the first ``warmup`` requests are the bootstrap: no version is live yet, so
  their inference logs go straight to ``inference-logs`` (``model_version``
  ``bootstrap``, ``server`` ``demo-warmup``), and requests after them wait
  until :meth:`~TrafficDriver.open_gate` (the runner opens it once the first
  checkpoint is promoted and both servers apply it);
- feedback is sent when it is due: through ``POST /v1/feedback`` on a server
  (alternating) or straight to the ``feedback`` topic with a
  :class:`~services.publish.feedback.FeedbackProducer`; its ``ts`` is the
  wall-clock time it was due, so the joiner's event time follows the traffic;
- while ``paused`` (the runner's back-pressure: the worker has joined too
  few of the requests sent), new requests wait; feedback still goes out;
- until the runner sets ``http_feedback`` (the servers answer), feedback
  meant for ``POST /v1/feedback`` goes to the topic instead, so the bootstrap
  need not wait for the servers to start;
- a 503 (a server not ready, or feedback not acknowledged in time) is retried
  with the same request ids and event ids; anything else that is not a
  success stops the demo with what the server said.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from kafka import KafkaProducer

from schemas.codec import encode
from schemas.errors import StackError
from schemas.events import FeedbackEvent, InferenceLog
from services.config import TopicsConfig
from services.demo.servers import DemoServer
from services.demo.traffic import PlannedRequest, TrafficConfig
from services.publish.feedback import FeedbackProducer

#: How long a call answered 503 is retried before the demo gives up.
RETRY_FOR_S = 60.0
#: Most feedback events in one ``POST /v1/feedback`` or one producer call.
FEEDBACK_CHUNK = 500


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class SentCounts:
    """What the driver has sent so far."""

    warmup_logs: int = 0
    predicted: int = 0
    feedback_http: int = 0
    feedback_topic: int = 0
    repeats: int = 0
    garbage: int = 0
    held_s: float = 0.0
    """Seconds new requests waited because the loop was too far behind (``paused``)."""


@dataclass(frozen=True)
class _Feedback:
    """One feedback event to send, by which path, and whether a retry follows."""

    event: FeedbackEvent
    via: Literal["http", "topic"]
    repeat_after_ms: int | None = None
    is_repeat: bool = False


@dataclass(frozen=True)
class _Due:
    """Something to send at a wall-clock moment: feedback, or a held-back request."""

    feedback: _Feedback | None = None
    request: PlannedRequest | None = None


class TrafficDriver:
    """Sends the planned traffic; see the module docstring."""

    def __init__(
        self,
        requests: Sequence[PlannedRequest],
        config: TrafficConfig,
        *,
        servers: Sequence[DemoServer],
        producer: KafkaProducer,
        feedback: FeedbackProducer,
        topics: TopicsConfig,
        warmup: int,
    ) -> None:
        if not servers:
            raise ValueError("the traffic driver needs at least one server")
        self.requests = list(requests)
        self.config = config
        self.servers = list(servers)
        self.producer = producer
        self.feedback = feedback
        self.topics = topics
        self.warmup = warmup
        self.sent = SentCounts()
        self.gate_open = False
        self.http_feedback = True
        self.paused = False
        """Set by the runner while the loop is too far behind: new requests wait."""
        self._last_step = time.monotonic()
        """False while the servers are starting: feedback meant for HTTP goes to the topic."""
        self._next = 0
        self._next_at = time.monotonic()
        self._due: list[tuple[float, int, _Due]] = []
        self._seq = itertools.count()
        self._turn = itertools.cycle(range(len(self.servers)))
        self._feedback_turn = itertools.cycle(range(len(self.servers)))

    # -- state --------------------------------------------------------------

    @property
    def warmup_sent(self) -> bool:
        """Every bootstrap request is out (their feedback may still be due)."""
        return self._next >= min(self.warmup, len(self.requests))

    @property
    def done(self) -> bool:
        """Every request and every feedback event has been sent."""
        return self._next >= len(self.requests) and not self._due

    def open_gate(self) -> None:
        """Let the requests after the bootstrap go to the servers, paced from now."""
        self.gate_open = True
        self._next_at = max(self._next_at, time.monotonic())

    def next_due_in(self) -> float:
        """Seconds until something is due (0 when something is due now)."""
        now = time.monotonic()
        candidates = [self._due[0][0]] if self._due else []
        if self._next < len(self.requests) and (self._next < self.warmup or self.gate_open):
            candidates.append(self._next_at)
        return max(0.0, min(candidates) - now) if candidates else 1.0

    # -- sending ------------------------------------------------------------

    def step(self) -> None:
        """Send everything that is due now."""
        now = time.monotonic()
        feedback: list[_Feedback] = []
        batch: list[PlannedRequest] = []
        while self._due and self._due[0][0] <= now:
            _, _, due = heapq.heappop(self._due)
            if due.feedback is not None:
                feedback.append(due.feedback)
            elif due.request is not None:
                batch.append(due.request)
        while self._next < len(self.requests) and self._next_at <= now:
            planned = self.requests[self._next]
            if planned.index >= self.warmup and (not self.gate_open or self.paused):
                break
            self._next += 1
            self._next_at += self.config.interval_ms / 1000.0
            if planned.garbage is not None:
                topic, body = planned.garbage
                self.producer.send(
                    self.topics.name(topic), key=planned.request_id.encode(), value=body
                )
                self.sent.garbage += 1
            fb = planned.feedback
            if fb is not None and fb.before_log:
                # The feedback goes first; the request follows after its delay.
                feedback.append(
                    _Feedback(self._event(planned, now_ms()), fb.via, fb.repeat_after_ms)
                )
                self._push(fb.delay_ms, _Due(request=planned))
                continue
            batch.append(planned)
        if self._next < len(self.requests) and (not self.gate_open or self.paused):
            if self.gate_open and self._next_at < now:
                self.sent.held_s += now - max(self._next_at, self._last_step)
            self._next_at = max(self._next_at, now)  # no burst when the gate opens
        self._last_step = now
        self._send_feedback(feedback)
        warm = [r for r in batch if r.index < self.warmup]
        served = [r for r in batch if r.index >= self.warmup]
        if warm:
            self._log_directly(warm)
        for start in range(0, len(served), self.config.batch):
            self._predict(served[start : start + self.config.batch])

    def _push(self, after_ms: float, due: _Due) -> None:
        heapq.heappush(self._due, (time.monotonic() + after_ms / 1000.0, next(self._seq), due))

    def _event(self, planned: PlannedRequest, ts: int) -> FeedbackEvent:
        assert planned.feedback is not None  # noqa: S101 - callers pass requests with feedback
        return FeedbackEvent(
            schema_version=1,
            event_id=planned.feedback.event_id,
            ts=ts,
            request_id=planned.request_id,
            model=self.config.model,
            label=planned.feedback.label,
        )

    def _answered(self, planned: Sequence[PlannedRequest]) -> None:
        """Schedule the feedback of requests that were just answered (or logged)."""
        t = now_ms()
        for r in planned:
            fb = r.feedback
            if fb is None or fb.before_log:
                continue
            event = self._event(r, t + fb.delay_ms)
            self._push(fb.delay_ms, _Due(_Feedback(event, fb.via, fb.repeat_after_ms)))

    def _log_directly(self, planned: Sequence[PlannedRequest]) -> None:
        """Bootstrap requests: their inference logs go straight to the topic."""
        topic = self.topics.name("inference_logs")
        t = now_ms()
        for r in planned:
            log = InferenceLog(
                schema_version=1,
                event_id=f"inf-{r.request_id}",
                ts=t,
                request_id=r.request_id,
                model=self.config.model,
                model_version="bootstrap",
                features=dict(r.features),
                prediction=False,
                route="live",
                server="demo-warmup",
            )
            self.producer.send(topic, key=r.request_id.encode(), value=encode(log))
        self.producer.flush()
        self.sent.warmup_logs += len(planned)
        self._answered(planned)

    def _predict(self, planned: Sequence[PlannedRequest]) -> None:
        server = self.servers[next(self._turn)]
        body = {
            "instances": [{"request_id": r.request_id, "features": r.features} for r in planned]
        }
        answer = self._call(server, f"/v1/models/{self.config.model}:predict", body)
        predictions = answer.get("predictions", [])
        stats = server.stats
        stats.predict_calls += 1
        stats.requests += len(predictions)
        for p in predictions:
            stats.versions[str(p.get("model_version"))] += 1
            stats.routes[str(p.get("route") or "live")] += 1
        self.sent.predicted += len(predictions)
        self._answered(planned)

    def _send_feedback(self, items: Sequence[_Feedback]) -> None:
        if not items:
            return
        by_http = self.http_feedback
        http = [f.event for f in items if f.via == "http" and by_http]
        topic = [f.event for f in items if f.via == "topic" or not by_http]
        for start in range(0, len(http), FEEDBACK_CHUNK):
            chunk = http[start : start + FEEDBACK_CHUNK]
            server = self.servers[next(self._feedback_turn)]
            payload = [e.model_dump(mode="json") for e in chunk]
            accepted = self._call(server, "/v1/feedback", payload).get("accepted", 0)
            server.stats.feedback_posted += int(accepted)
        for start in range(0, len(topic), FEEDBACK_CHUNK):
            self.feedback.send(topic[start : start + FEEDBACK_CHUNK])
        for f in items:
            if f.repeat_after_ms is not None:  # a producer retry, by the other path
                other: Literal["http", "topic"] = "topic" if f.via == "http" else "http"
                self._push(f.repeat_after_ms, _Due(_Feedback(f.event, other, is_repeat=True)))
        self.sent.feedback_http += len(http)
        self.sent.feedback_topic += len(topic)
        self.sent.repeats += sum(f.is_repeat for f in items)

    def _call(self, server: DemoServer, path: str, body: Any) -> dict[str, Any]:
        """POST ``body``; retry a 503 or a refused connection; StackError on anything else."""
        deadline = time.monotonic() + RETRY_FOR_S
        while True:
            try:
                r = server.http.post(path, json=body)
            except httpx.ConnectError as exc:
                server.check_alive()
                status, detail = 0, str(exc)
            else:
                if r.status_code in (200, 202):
                    answer: dict[str, Any] = r.json()
                    return answer
                status, detail = r.status_code, r.text[:500]
                if status != 503:
                    raise StackError(
                        "a model server refused the demo's traffic",
                        server=server.server_id,
                        path=path,
                        status=status,
                        answer=detail,
                    )
            server.stats.retries += 1
            if time.monotonic() > deadline:
                raise StackError(
                    "a model server kept refusing the demo's traffic",
                    server=server.server_id,
                    path=path,
                    status=status,
                    answer=detail,
                    retried_s=RETRY_FOR_S,
                )
            time.sleep(0.2)
