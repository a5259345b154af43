"""The gateway agent's side of shadow scores: decoded, repeats dropped by event_id,
scored in the live metrics under route ``shadow`` and shown at ``/metrics`` (no
broker: a faust app that is never started)."""

from __future__ import annotations

from pathlib import Path

import faust

from schemas.codec import encode
from services.config import TopicsConfig
from services.deadletters import RawRecord
from services.validation.live_metrics import LiveMetrics
from services.validation.service import Validation
from streams.gateway import GatewayAgent
from tests.unit.validation_fakes import Clock, FakeEvaluator, FlakyPointer, M, config, shadowed

TOPICS = TopicsConfig(prefix="x.")


def test_shadow_scores_reach_the_live_metrics_once_each(tmp_path: Path) -> None:
    app = faust.App("t", broker="kafka://127.0.0.1:9", datadir=str(tmp_path), store="memory://")
    cfg = config(guard={"enabled": False})
    live = LiveMetrics({M: cfg})
    validation = Validation({M: cfg}, FakeEvaluator({}), FlakyPointer(), clock=Clock())
    agent = GatewayAgent(app, TOPICS, validation, live_metrics=live)
    scores = [shadowed(f"r{i}", "v2", "v1", right=i % 2 == 0, live_right=True) for i in range(4)]
    records = [
        RawRecord(TOPICS.shadow_scores, 0, i, M.encode(), encode(s)) for i, s in enumerate(scores)
    ]
    repeat = RawRecord(TOPICS.shadow_scores, 0, 9, M.encode(), encode(scores[0]))
    junk = RawRecord(TOPICS.shadow_scores, 0, 10, M.encode(), b'{"not": "a score"}')
    assert agent.handle_shadow_scores([*records, repeat, junk]) == []
    assert (agent.repeated_shadow_scores, agent.malformed_shadow_scores) == (1, 1)
    figures = live.snapshot()[M]["v2"]["routes"]["shadow"]
    assert (figures["n"], figures["metrics"]["accuracy_total"]) == (4, 0.5)
    assert "v1" not in live.snapshot()[M]  # live's figures come from the training examples
    assert validation.describe()["models"][M]["holdout"]["shadow_scores_seen"] == 4
    text = agent.render_metrics()
    assert 'driftloop_live_metric{model="m",version="v2",route="shadow",metric="accuracy"' in text
    assert "driftloop_gateway_repeated_shadow_scores_total 1" in text
