"""The model server's inference logs: bytes templating against the contract's codec."""

from __future__ import annotations

import math
import os

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import limits as L
from schemas.codec import decode, encode
from schemas.events import InferenceLog
from schemas.strategies import inference_logs, scalars
from services.learning.adapters import Prediction
from services.server import logs as server_logs
from services.server.logs import (
    LogTemplate,
    RequestLogs,
    Templates,
    contract_prediction,
    contract_scores,
    valid_scores,
)

MODERATE = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@MODERATE
@given(event=inference_logs())
def test_a_template_writes_the_codecs_bytes_and_they_decode_to_the_same_event(
    event: InferenceLog,
) -> None:
    template = LogTemplate(event.model, event.model_version, event.route, event.server)
    raw = template.encode(
        orjson.dumps(event.event_id),
        b"%d" % event.ts,
        event.request_id,
        event.features,
        event.prediction,
        event.scores,
    )
    assert raw == encode(event)
    assert decode(InferenceLog, raw) == event
    assert event.scores is None or valid_scores(event.scores)


@MODERATE
@given(
    event=inference_logs(),
    value=st.one_of(scalars(), st.floats(), st.integers(), st.none()),
    scores=st.none()
    | st.dictionaries(
        st.one_of(st.text(max_size=80), st.booleans(), st.integers()),
        st.floats(),
        max_size=L.MAX_SCORES + 2,
    ),
)
def test_any_model_output_is_logged_as_a_valid_event_or_counted(
    event: InferenceLog, value: object, scores: dict[object, float] | None
) -> None:
    """Whatever a model returns (NaN, huge ints, odd labels), a log that is made decodes
    strictly to the prediction it carries; one that is not is counted, never raised."""
    prediction = contract_prediction(value)
    score_map = contract_scores(Prediction(value, scores))
    templates: Templates = {}
    logs = RequestLogs(templates, event.model, event.server, "inference-logs")
    logs.add(event.model_version, "live", event.request_id, event.features, prediction, score_map)
    if logs.records:
        (record,) = logs.records
        decoded = decode(InferenceLog, record.value)
        assert record.key == event.request_id.encode()
        assert record.topic == "inference-logs"
        assert (decoded.request_id, decoded.features, decoded.model) == (
            event.request_id,
            event.features,
            event.model,
        )
        assert decoded.prediction == prediction
        assert decoded.scores == score_map
        assert (decoded.route, decoded.server) == ("live", event.server)
    else:
        assert sum(logs.failures.values()) == 1
        assert prediction is None or score_map is not None


def test_a_requests_logs_share_one_time_and_have_distinct_event_ids() -> None:
    templates: Templates = {}
    logs = RequestLogs(templates, "m", "s1", "t")
    for i in range(5):
        logs.add("v1", "live", f"r-{i}", {"x": float(i)}, 0.5, {"true": 0.5, "false": 0.5})
    logs.add("v2", "shadow", "r-0", {"x": 0.0}, True, None)
    events = [decode(InferenceLog, r.value) for r in logs.records]
    assert len({e.event_id for e in events}) == 6
    assert len({e.ts for e in events}) == 1
    assert [(e.model_version, e.route) for e in events][-2:] == [("v1", "live"), ("v2", "shadow")]
    assert set(templates) == {("m", "v1", "live", "s1"), ("m", "v2", "shadow", "s1")}
    other = RequestLogs(templates, "m", "s1", "t")
    other.add("v1", "live", "r-0", {"x": 0.0}, 0.5, None)
    assert decode(InferenceLog, other.records[0].value).event_id not in {e.event_id for e in events}


def test_what_cannot_be_logged_is_counted_by_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_logs, "LOG_LIMIT", 1000)  # valid input cannot reach 2 MiB
    logs = RequestLogs({}, "m", "s1", "t")
    logs.add("v1", "live", "r-1", {"x": 1.0}, None, None)  # the model could not tell
    logs.add("v1", "live", "r-2", {"x": 1.0}, 1, {"true": math.nan})  # NaN score
    logs.add("v1", "live", "r-3", {"x": 1.0}, 1, {"": 0.5})  # empty label
    logs.add("bad version!", "live", "r-4", {"x": 1.0}, 1, None)  # not a Name
    logs.add("v1", "live", "r-5", {"x": "y" * 1000}, 1, None)  # over the size limit
    logs.add("v1", "live", "r-6", {"x": 1.0}, 1, None)
    assert logs.failures == {"no_prediction": 1, "invalid": 3, "publish": 1}
    assert [r.key for r in logs.records] == [b"r-6"]


def test_event_ids_are_unique_across_requests_and_a_forked_child_gets_its_own_prefix() -> None:
    ids = set()
    for _ in range(3):
        logs = RequestLogs({}, "m", "s1", "t")
        for i in range(3):
            logs.add("v1", "live", f"r-{i}", {"x": 1.0}, 1, None)
        ids |= {decode(InferenceLog, r.value).event_id for r in logs.records}
    assert len(ids) == 9
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first event id, then out without pytest's teardown
        child = RequestLogs({}, "m", "s1", "t")
        child.add("v1", "live", "r", {"x": 1.0}, 1, None)
        os.write(write, decode(InferenceLog, child.records[0].value).event_id.encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child_id = os.read(read, 200).decode()
    os.close(read)
    assert child_id.split("-")[0] != next(iter(ids)).split("-")[0]
