"""validate_feedback and FeedbackProducer over the in-memory publisher."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from schemas.errors import SchemaError
from schemas.events import FeedbackEvent
from services.publish import InMemoryPublisher, PublishError
from services.publish.feedback import FeedbackProducer, validate_feedback


def body(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "schema_version": 1,
        "event_id": "fb-1",
        "request_id": "r-1",
        "model": "ctr",
        "ts": 1_700_000_000_000,
        "label": True,
    }
    return fields | changes


def test_one_event_a_list_and_json_all_validate() -> None:
    (one,) = validate_feedback(body())
    assert one == FeedbackEvent.model_validate(body())
    assert validate_feedback([body(), body(event_id="fb-2")])[1].event_id == "fb-2"
    assert validate_feedback(orjson.dumps([body()])) == [one]
    assert validate_feedback(orjson.dumps(body()).decode()) == [one]
    assert validate_feedback(one) == [one]


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        (body(ts="soon"), "ts", "integer"),
        (body(event_id=None), "event_id", "string"),
        ({k: v for k, v in body().items() if k != "event_id"}, "event_id", "missing"),
        (body(label=float("nan")), "label", "finite"),
        (body(colour="red"), "colour", "unknown field"),
        (body(kind="telepathic"), "kind", "explicit' or 'implicit"),
    ],
)
def test_invalid_feedback_names_the_field(data: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(SchemaError, match=words) as info:
        validate_feedback(data)
    assert info.value.field == field


def test_in_a_list_the_error_names_the_index_and_nothing_is_sent() -> None:
    twin = InMemoryPublisher()
    producer = FeedbackProducer(publisher=twin)
    with pytest.raises(SchemaError) as info:
        producer.send([body(), body(event_id="fb-2", model="not a name!")])
    assert info.value.field == "model"
    assert info.value.context["index"] == 1
    assert "index=1" in str(info.value)
    assert twin.sent == []
    assert twin.pending == []


@pytest.mark.parametrize(
    ("data", "words"),
    [(b"{nope", "not valid JSON"), (b"[]", "no feedback"), (b"3", "expected"), (b"[3]", "object")],
)
def test_malformed_bodies_are_refused_clearly(data: bytes, words: str) -> None:
    with pytest.raises(SchemaError, match=words):
        validate_feedback(data)


def test_too_many_events_in_one_call_are_refused() -> None:
    with pytest.raises(SchemaError, match="over the limit"):
        validate_feedback([body(event_id=f"fb-{i}") for i in range(1001)])


def test_send_returns_the_event_ids_once_acknowledged_and_raises_otherwise() -> None:
    twin = InMemoryPublisher()
    producer = FeedbackProducer(publisher=twin)
    assert producer.send([body(), body(event_id="fb-2")]) == ["fb-1", "fb-2"]
    assert [key for _, key, _ in twin.sent] == [b"r-1", b"r-1"]
    assert {topic for topic, _, _ in twin.sent} == {"feedback"}
    twin.fail_next = True
    with pytest.raises(PublishError, match="not acknowledged"):
        producer.send(body(event_id="fb-3"))
