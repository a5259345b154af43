"""The agent's side of routing: what :meth:`JoinerWorker.handle` sends for
misplaced, forwarded, marker and junk records (no broker: a faust app that is
never started, its table swapped for a dict)."""

from __future__ import annotations

import json
from pathlib import Path

import faust
import pytest

from schemas.codec import decode, encode
from schemas.events import (
    DeadLetter,
    FeedbackEvent,
    InferenceLog,
    ShadowScore,
    TrainingExample,
    shadow_score_id,
)
from services.attribution import JoinerConfig, Scored, join_partition
from services.attribution.routing import ROUTE_HEADER, parse_route
from services.config import TopicsConfig
from services.deadletters import RawRecord
from services.publish.base import route
from streams.joiner import JoinerWorker
from tests.unit.joiner_sends import wire

TOPICS = TopicsConfig(prefix="x.", partitions=3)


@pytest.fixture
def worker(tmp_path: Path) -> JoinerWorker:
    app = faust.App("t", broker="kafka://127.0.0.1:9", datadir=str(tmp_path), store="memory://")
    built = JoinerWorker(app, TOPICS, JoinerConfig())
    built.store.table = {}  # the same mapping interface as the faust table
    built.joiner.rebalance([0, 1, 2])
    return built


def _request_on(partition: int) -> str:
    return next(f"r{i}" for i in range(1000) if join_partition(f"r{i}", 3) == partition)


def test_a_misplaced_record_is_forwarded_as_read_and_joined_at_its_partition(
    worker: JoinerWorker,
) -> None:
    rid = _request_on(2)
    log = InferenceLog.new(
        event_id="i1", request_id=rid, model="m", model_version="v1", ts=1_000,
        features={"x": 1.0}, prediction=0.5,
    )  # fmt: skip
    raw = encode(log).replace(b",", b", ")  # not the canonical encoding: kept byte for byte
    ((kind, key, value, partition, headers),) = wire(
        worker.handle(RawRecord(TOPICS.inference_logs, 0, 17, b"wrong key", raw))
    )
    assert (kind, key, value, partition) == ("repartition", b"wrong key", raw, 2)
    assert headers is not None
    route = parse_route(headers, 2)
    assert json.loads(headers[0][1])["topic"] == TOPICS.inference_logs
    assert worker.stats.forwarded == 1
    # read back on repartition partition 2: joined there as inference:0's record
    assert wire(worker.handle(RawRecord(TOPICS.join_repartition, 2, 0, key, value), headers)) == []
    stored = worker.store.get(rid)
    assert stored is not None
    assert stored.partition == 2
    assert stored.inference_source is not None
    assert (stored.inference_source.offset, stored.inference_source.raw) == (17, raw)
    assert route.source.partition == 0
    fb = FeedbackEvent.new(event_id="f1", request_id=rid, model="m", ts=1_500, label=1)
    ((kind, _, value, _, _),) = wire(
        worker.handle(RawRecord(TOPICS.feedback, 2, 0, None, encode(fb)))
    )
    assert kind == "examples"
    assert decode(TrainingExample, value).inference_event_id == "i1"


def test_a_forwarded_record_refused_later_is_dead_lettered_with_its_first_source(
    worker: JoinerWorker,
) -> None:
    rid = _request_on(1)
    fb = FeedbackEvent.new(event_id="f1", request_id=rid, model="m", ts=5, label="x")
    ((_, _, value, partition, headers),) = wire(
        worker.handle(RawRecord(TOPICS.feedback, 0, 3, None, encode(fb)))
    )
    wire(worker.handle(RawRecord(TOPICS.join_repartition, 1, 0, None, value), headers))
    log = InferenceLog.new(
        event_id="i1", request_id=rid, model="other", model_version="v1", ts=5,
        features={"x": 1.0}, prediction=0.5,
    )  # fmt: skip
    out = wire(worker.handle(RawRecord(TOPICS.inference_logs, 1, 0, None, encode(log))))
    (letter,) = [decode(DeadLetter, v) for k, _, v, _, _ in out if k == "dead_letters"]
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (
        TOPICS.feedback, 0, 3,
    )  # fmt: skip
    assert (letter.error_kind, letter.field) == ("validation", "model")
    assert partition == 1


@pytest.mark.parametrize(
    ("headers", "value", "kind"),
    [
        (None, b"x", "decode"),
        ([(ROUTE_HEADER, b"{")], b"x", "decode"),
        (
            [(ROUTE_HEADER, b'{"type":"marker","input":"feedback:7","ts":1,"idle":false}')],
            b"",
            "processing",
        ),
    ],
)
def test_a_repartition_record_no_joiner_wrote_is_dead_lettered_as_read(
    worker: JoinerWorker, headers: list[tuple[str, bytes]] | None, value: bytes, kind: str
) -> None:
    ((out, key, letter_bytes, _, _),) = wire(
        worker.handle(RawRecord(TOPICS.join_repartition, 1, 9, b"k", value), headers)
    )
    letter = decode(DeadLetter, letter_bytes)
    assert (out, key) == ("dead_letters", TOPICS.join_repartition.encode())
    assert (letter.source_partition, letter.source_offset, letter.error_kind) == (1, 9, kind)


def test_a_forward_whose_value_does_not_decode_is_dead_lettered_at_its_first_source(
    worker: JoinerWorker,
) -> None:
    header = (
        b'{"type":"forward","input":"inference:2","topic":"x.inference-logs",'
        b'"partition":2,"offset":4,"before":null}'
    )
    ((_, _, letter_bytes, _, _),) = wire(
        worker.handle(
            RawRecord(TOPICS.join_repartition, 0, 1, None, b"\xff"), [(ROUTE_HEADER, header)]
        )
    )
    letter = decode(DeadLetter, letter_bytes)
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (
        TOPICS.inference_logs, 2, 4,
    )  # fmt: skip
    assert letter.error_kind == "decode"


def test_a_shadow_score_is_sent_like_an_example_on_its_own_topic(worker: JoinerWorker) -> None:
    score = ShadowScore.new(
        event_id=shadow_score_id("r1", "s1"), ts=5, request_id="r1", example_id="e1",
        model="m", model_version="v2", shadow_event_id="s1", prediction=1, label=1,
        live_version="v1", live_event_id="i1", live_ts=1, live_prediction=0,
    )  # fmt: skip
    current = RawRecord(TOPICS.feedback, 0, 3, None, b"{}")
    sent = worker._send(Scored(score), current)
    assert sent is score
    assert route(sent, TOPICS) == ("x.shadow-scores", b"m")
    assert wire([sent], TOPICS) == [("shadow_scores", b"m", encode(score), None, None)]
