"""What a producer sees when it sends a payload driftloop rejects: one SchemaError
naming the field and the reason, for each rule of the contract."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from schemas.codec import decode, decode_via_orjson, encode
from schemas.errors import DriftloopError, SchemaError
from schemas.events import FeedbackEvent, InferenceLog
from schemas.limits import MAX_EVENT_BYTES

DECODERS = pytest.mark.parametrize("decoder", [decode, decode_via_orjson], ids=["decode", "orjson"])


def feedback(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "schema_version": 1,
        "event_id": "fb-1",
        "request_id": "req-1",
        "model": "fraud",
        "ts": 1_760_000_000_000,
        "label": 1,
    }
    return fields | overrides


def inference(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "schema_version": 1,
        "event_id": "inf-1",
        "request_id": "req-1",
        "model": "fraud",
        "model_version": "v7",
        "ts": 1_760_000_000_000,
        "features": {"amount": 12.5, "country": "DE", "returning": True, "visits": 3},
        "prediction": 0.12,
    }
    return fields | overrides


def rejected(decoder: Any, model: Any, data: bytes | str) -> SchemaError:
    with pytest.raises(SchemaError) as info:
        decoder(model, data)
    return info.value


def test_minimal_feedback_gets_default_kind_and_weight() -> None:
    event = decode(FeedbackEvent, orjson.dumps(feedback()))
    assert event.kind == "explicit"
    assert event.weight == 1.0
    assert event.label == 1
    assert not isinstance(event.label, bool)


def test_inference_log_keeps_feature_types() -> None:
    event = decode(InferenceLog, orjson.dumps(inference()))
    assert event.features == {"amount": 12.5, "country": "DE", "returning": True, "visits": 3}
    assert [type(v) for v in event.features.values()] == [float, str, bool, int]
    assert event.scores is None
    assert event.route is None
    assert event.server is None


@DECODERS
@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_number_is_rejected_with_its_field(decoder: Any, literal: str) -> None:
    text = orjson.dumps(inference()).decode().replace('"amount":12.5', f'"amount":{literal}')
    error = rejected(decoder, InferenceLog, text.encode())
    assert error.field == "features.amount"
    assert "finite" in error.reason
    weight = orjson.dumps(feedback()).decode().replace('"label":1', f'"label":1,"weight":{literal}')
    assert rejected(decoder, FeedbackEvent, weight.encode()).field == "weight"


@DECODERS
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ts", True),
        ("ts", "1760000000000"),
        ("ts", 1.76e12),
        ("schema_version", True),
        ("schema_version", "1"),
        ("request_id", 42),
        ("kind", True),
        ("weight", "1"),
    ],
)
def test_no_type_coercion(decoder: Any, field: str, value: Any) -> None:
    error = rejected(decoder, FeedbackEvent, orjson.dumps(feedback(**{field: value})))
    assert error.field == field


@DECODERS
def test_bool_and_int_are_distinct_labels(decoder: Any) -> None:
    assert decoder(FeedbackEvent, orjson.dumps(feedback(label=True))).label is True
    one = decoder(FeedbackEvent, orjson.dumps(feedback(label=1))).label
    assert one == 1
    assert type(one) is int
    # and they stay distinct on the way out
    assert b'"label":true' in encode(decoder(FeedbackEvent, orjson.dumps(feedback(label=True))))


@DECODERS
def test_int_is_accepted_where_a_float_is_expected(decoder: Any) -> None:
    event = decoder(FeedbackEvent, orjson.dumps(feedback(weight=2)))
    assert event.weight == 2.0
    assert isinstance(event.weight, float)


@DECODERS
def test_oversize_payload_is_rejected_before_parsing(decoder: Any) -> None:
    garbage = b"{" + b"x" * MAX_EVENT_BYTES  # not JSON: a parser would complain about that
    error = rejected(decoder, InferenceLog, garbage)
    assert error.field == ""
    assert "over the limit" in error.reason
    assert str(MAX_EVENT_BYTES) in error.reason
    assert "over the limit" in rejected(decoder, InferenceLog, garbage.decode()).reason


@DECODERS
@pytest.mark.parametrize("version", [0, 2, 99, -1])
def test_unknown_schema_version_is_rejected(decoder: Any, version: int) -> None:
    error = rejected(decoder, FeedbackEvent, orjson.dumps(feedback(schema_version=version)))
    assert error.field == "schema_version"
    assert "unknown schema_version" in error.reason


@DECODERS
@pytest.mark.parametrize(
    "field", ["schema_version", "event_id", "request_id", "model", "ts", "label"]
)
def test_missing_required_field_is_named(decoder: Any, field: str) -> None:
    fields = feedback()
    del fields[field]
    error = rejected(decoder, FeedbackEvent, orjson.dumps(fields))
    assert (error.field, error.reason) == (field, "required field is missing")


@DECODERS
def test_unknown_field_is_rejected(decoder: Any) -> None:
    error = rejected(decoder, FeedbackEvent, orjson.dumps(feedback(lable="typo")))
    assert (error.field, error.reason) == ("lable", "unknown field")


@DECODERS
@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe{}", "not valid UTF-8"),
        (b'{"event_id":"\xc3"}', "not valid UTF-8"),
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b'{"a":1,}', "not valid JSON"),
        (b'{"event_id":"\\ud800"}', "not valid JSON"),
        (b"[]", "expected a JSON object, got an array"),
        (b'"feedback"', "expected a JSON object, got a string"),
        (b"null", "expected a JSON object, got null"),
        (b"3", "expected a JSON object, got a number"),
    ],
)
def test_payload_that_is_not_a_json_object(decoder: Any, payload: bytes, reason: str) -> None:
    error = rejected(decoder, FeedbackEvent, payload)
    assert error.field == ""
    assert reason in error.reason


@DECODERS
def test_lone_surrogate_in_text_input_is_rejected(decoder: Any) -> None:
    text = orjson.dumps(feedback()).decode().replace("req-1", "req-\ud800")
    assert "UTF-8" in rejected(decoder, FeedbackEvent, text).reason


@DECODERS
def test_union_error_says_what_a_feature_may_be(decoder: Any) -> None:
    error = rejected(decoder, InferenceLog, orjson.dumps(inference(features={"tags": ["a"]})))
    assert error.field == "features.tags"
    assert error.reason == "must be a finite number, a string or a boolean"


@DECODERS
def test_too_long_feature_value_names_the_feature(decoder: Any) -> None:
    error = rejected(decoder, InferenceLog, orjson.dumps(inference(features={"note": "x" * 300})))
    assert error.field == "features.note"
    assert "256" in error.reason


def test_schema_error_is_a_driftloop_error_with_context() -> None:
    error = rejected(decode, FeedbackEvent, orjson.dumps(feedback(weight=-1)))
    assert isinstance(error, DriftloopError)
    assert error.field == "weight"
    assert error.context["model_type"] == "FeedbackEvent"
    assert str(error).startswith("weight: ")


def test_decode_accepts_bytearray_and_memoryview() -> None:
    data = orjson.dumps(feedback())
    assert decode(FeedbackEvent, bytearray(data)) == decode(FeedbackEvent, memoryview(data))


def test_decode_of_a_non_bytes_object_is_a_schema_error() -> None:
    assert rejected(decode, FeedbackEvent, 42).field == ""  # type: ignore[arg-type]  # misuse on purpose


def test_encode_writes_compact_utf8_json_in_field_order() -> None:
    event = decode(FeedbackEvent, orjson.dumps(feedback(request_id="réq-✓")))
    data = encode(event)
    assert data.startswith(b'{"schema_version":1,"event_id":"fb-1","ts":1760000000000,')
    assert "réq-✓".encode() in data


def test_unvalidated_nan_is_caught_by_the_consumer() -> None:
    event = FeedbackEvent.model_construct(**(feedback() | {"weight": float("nan")}))
    # orjson writes NaN as null; the codec must not emit an event that fails decode
    data = encode(event)
    assert rejected(decode, FeedbackEvent, data).field == "weight"
