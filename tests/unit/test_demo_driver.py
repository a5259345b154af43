"""The demo's traffic driver: bootstrap logs to the topic, then HTTP to the servers,
feedback by both paths, the gate, retries of a 503 — against in-memory servers."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from schemas.codec import decode
from schemas.events import FeedbackEvent, InferenceLog
from services.config import TopicsConfig
from services.demo.driver import TrafficDriver
from services.demo.servers import ServerStats
from services.demo.traffic import TrafficConfig, plan
from services.publish.feedback import FeedbackProducer
from services.publish.memory import InMemoryPublisher

CONFIG = TrafficConfig(
    requests=300,
    drift_at=150,
    seed=5,
    interval_ms=0.0,
    feedback_delay_ms=(1, 20),
    late_after_ms=30,
    p_malformed=0.02,
)
WARMUP = 60


@dataclass
class FakeServer:
    """A model server's HTTP API in memory; answers 503 to its first ``refuse`` calls."""

    server_id: str
    refuse: int = 0
    predicted: list[str] = field(default_factory=list)
    feedback: list[dict[str, Any]] = field(default_factory=list)
    stopped: bool = False

    def __post_init__(self) -> None:
        self.stats = ServerStats(server_id=self.server_id, port=0, pid=0)
        self.http = httpx.Client(transport=httpx.MockTransport(self._handle), base_url="http://x")

    def _handle(self, request: httpx.Request) -> httpx.Response:
        if self.refuse:
            self.refuse -= 1
            return httpx.Response(503, json={"error": "not ready"})
        body = json.loads(request.content)
        if request.url.path.endswith(":predict"):
            ids = [i["request_id"] for i in body["instances"]]
            self.predicted += ids
            predictions = [
                {"request_id": i, "model_version": "v1", "route": "live", "prediction": True}
                for i in ids
            ]
            return httpx.Response(200, json={"predictions": predictions, "epoch": 1})
        self.feedback += body
        return httpx.Response(202, json={"accepted": len(body)})

    def check_alive(self) -> None:
        return None


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        self.sent.append((topic, key, value))

    def flush(self) -> None:
        return None


def _run(
    refuse: int = 0, *, http_feedback: bool = True
) -> tuple[TrafficDriver, list[FakeServer], FakeProducer, InMemoryPublisher]:
    servers = [FakeServer("a", refuse=refuse), FakeServer("b")]
    producer = FakeProducer()
    publisher = InMemoryPublisher()
    requests, _ = plan(CONFIG)
    driver = TrafficDriver(
        requests,
        CONFIG,
        servers=servers,  # type: ignore[arg-type]
        producer=producer,  # type: ignore[arg-type]
        feedback=FeedbackProducer(publisher=publisher),
        topics=TopicsConfig(),
        warmup=WARMUP,
    )
    driver.http_feedback = http_feedback
    deadline = time.monotonic() + 60
    while not driver.done:
        assert time.monotonic() < deadline, "the driver did not finish"
        driver.step()
        if driver.warmup_sent and not driver.gate_open:
            # Nothing after the bootstrap reaches a server before the gate opens.
            assert all(not s.predicted for s in servers)
            driver.open_gate()
        time.sleep(min(driver.next_due_in(), 0.005))
    return driver, servers, producer, publisher


def test_bootstrap_goes_to_the_topic_the_rest_to_the_servers_once_each() -> None:
    driver, servers, producer, _ = _run()
    requests, summary = plan(CONFIG)
    bad = {r.garbage[1] for r in requests if r.garbage is not None}
    logs = [
        decode(InferenceLog, v)
        for t, _, v in producer.sent
        if t == "inference-logs" and v not in bad
    ]
    assert [log.request_id for log in sorted(logs, key=lambda x: x.request_id)] == [
        r.request_id for r in requests[:WARMUP]
    ]
    assert all(log.model_version == "bootstrap" for log in logs)
    served = Counter(rid for s in servers for rid in s.predicted)
    assert set(served) == {r.request_id for r in requests[WARMUP:]}
    assert set(served.values()) == {1}
    # Calls alternate, so both servers get a share; each counts what it answered.
    assert all(s.stats.requests == len(s.predicted) > 0 for s in servers)
    assert driver.sent.predicted == len(requests) - WARMUP
    assert driver.sent.warmup_logs == WARMUP
    garbage = [v for _, _, v in producer.sent if v in bad]
    assert len(garbage) == summary.malformed == driver.sent.garbage > 0
    assert len(producer.sent) == WARMUP + summary.malformed


def test_feedback_goes_both_ways_and_a_retry_takes_the_other_path() -> None:
    driver, servers, _, publisher = _run()
    requests, summary = plan(CONFIG)
    over_http = [FeedbackEvent.model_validate(f) for s in servers for f in s.feedback]
    to_topic = publisher.events(FeedbackEvent)
    planned = {r.feedback.event_id: r.feedback for r in requests if r.feedback is not None}
    sent = Counter(e.event_id for e in [*over_http, *to_topic])
    assert set(sent) == set(planned)
    for event_id, times in sent.items():
        assert times == (2 if planned[event_id].repeat_after_ms is not None else 1)
    first_http = {e.event_id for e in over_http} - {
        e.event_id for e in to_topic if planned[e.event_id].via == "topic"
    }
    assert all(planned[i].via == "http" or planned[i].repeat_after_ms for i in first_http)
    assert driver.sent.repeats == summary.duplicates > 0
    assert sum(s.stats.feedback_posted for s in servers) == len(over_http)
    assert all(s.feedback for s in servers)


def test_a_503_is_retried_with_the_same_request_ids() -> None:
    _, servers, _, _ = _run(refuse=2)
    requests, _ = plan(CONFIG)
    assert servers[0].stats.retries == 2
    served = Counter(rid for s in servers for rid in s.predicted)
    assert set(served) == {r.request_id for r in requests[WARMUP:]}
    assert set(served.values()) == {1}


def test_while_the_servers_start_http_feedback_goes_to_the_topic() -> None:
    driver, servers, _, publisher = _run(http_feedback=False)
    _, summary = plan(CONFIG)
    assert all(not s.feedback for s in servers)
    assert len(publisher.events(FeedbackEvent)) == summary.feedback + summary.duplicates
    assert driver.sent.feedback_http == 0


def test_a_paused_driver_sends_no_new_request_until_resumed() -> None:
    servers = [FakeServer("a"), FakeServer("b")]
    requests, _ = plan(CONFIG)
    driver = TrafficDriver(
        requests,
        CONFIG,
        servers=servers,  # type: ignore[arg-type]
        producer=FakeProducer(),  # type: ignore[arg-type]
        feedback=FeedbackProducer(publisher=InMemoryPublisher()),
        topics=TopicsConfig(),
        warmup=WARMUP,
    )
    driver.open_gate()
    driver.paused = True
    for _ in range(20):
        driver.step()
        time.sleep(0.005)
    assert driver.sent.warmup_logs == WARMUP  # the bootstrap is not held back
    assert all(not s.predicted for s in servers)
    assert driver.sent.held_s > 0
    driver.paused = False
    driver.step()
    assert any(s.predicted for s in servers)
