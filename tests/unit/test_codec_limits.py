"""The limits are consistent: the largest valid event of every type still fits its
payload limit and round-trips, and one step past any limit is a SchemaError."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from schemas import limits as L
from schemas.codec import decode, encode
from schemas.errors import SchemaError
from schemas.events import (
    CheckpointEvent,
    DeadLetter,
    Event,
    FeedbackEvent,
    InferenceLog,
    TrainingExample,
    VersionEvent,
    training_example_id,
)

# orjson writes U+0000 as \u0000: six bytes for one character, the most any
# character costs. Names are restricted to ASCII, so they cost one byte each.
WORST = "\x00"


def worst(n: int, tag: int | str = "") -> str:
    """A string of ``n`` characters, each escaped to six bytes, unique by ``tag``."""
    prefix = str(tag)
    return prefix + WORST * (n - len(prefix))


NAME = "n" * L.MAX_NAME_CHARS
ID = worst(L.MAX_ID_CHARS)
LONG_VALUE = worst(L.MAX_VALUE_CHARS)
FEATURES = {worst(L.MAX_FEATURE_KEY_CHARS, i): LONG_VALUE for i in range(L.MAX_FEATURES)}
COMMON: dict[str, Any] = {"schema_version": 1, "event_id": ID, "ts": L.MAX_TS_MS}


def largest_events() -> list[Event]:
    return [
        InferenceLog(
            **COMMON,
            request_id=ID,
            model=NAME,
            model_version=NAME,
            features=FEATURES,
            prediction=LONG_VALUE,
            scores={
                worst(L.MAX_SCORE_LABEL_CHARS, i): 0.30000000000000004 for i in range(L.MAX_SCORES)
            },
            route="shadow",
            server=ID,
        ),
        FeedbackEvent(
            **COMMON,
            request_id=ID,
            model=NAME,
            label=LONG_VALUE,
            kind="implicit",
            weight=-1.7976931348623157e308 * -1,
        ),
        TrainingExample(
            **COMMON,
            example_id=training_example_id(ID, ID),
            request_id=ID,
            model=NAME,
            model_version=NAME,
            features=FEATURES,
            label=LONG_VALUE,
            weight=1.7976931348623157e308,
            inference_event_id=ID,
            feedback_event_id=ID,
            inference_ts=L.MAX_TS_MS,
            feedback_ts=L.MAX_TS_MS,
            join_latency_ms=L.MAX_INT,
        ),
        CheckpointEvent(
            **COMMON,
            model=NAME,
            version=NAME,
            parent_version=NAME,
            step=L.MAX_INT,
            examples_seen=L.MAX_INT,
            trigger="config_change",
            metrics={
                worst(L.MAX_METRIC_NAME_CHARS, i): -2.2250738585072014e-308
                for i in range(L.MAX_METRICS)
            },
            location=worst(L.MAX_TEXT_CHARS),
            manifest_sha256="f" * 64,
        ),
        VersionEvent(
            **COMMON,
            model=NAME,
            action="clear_shadow",
            live=NAME,
            previous=NAME,
            canary=NAME,
            canary_percent=33.333333333333336,
            shadow=NAME,
            epoch=L.MAX_INT,
            actor=ID,
            reason=worst(L.MAX_TEXT_CHARS),
            history=tuple(
                f"{i}".ljust(L.MAX_NAME_CHARS, "n") for i in range(L.MAX_ROLLBACK_HISTORY)
            ),
            from_live=NAME,
            from_canary=NAME,
            from_shadow=NAME,
        ),
        DeadLetter(
            **COMMON,
            source_topic="t" * L.MAX_TOPIC_CHARS,
            source_partition=2**31 - 1,
            source_offset=L.MAX_INT,
            key_b64=base64.b64encode(b"k" * L.MAX_DEAD_LETTER_KEY_BYTES).decode(),
            value_b64=base64.b64encode(b"v" * L.MAX_DEAD_LETTER_RAW_BYTES).decode(),
            truncated=True,
            value_size=L.MAX_INT,
            value_sha256="f" * 64,
            error=worst(L.MAX_TEXT_CHARS),
            error_kind="x" * 32,
            field=worst(L.MAX_FIELD_PATH_CHARS),
        ),
    ]


@pytest.mark.parametrize("event", largest_events(), ids=lambda e: type(e).__name__)
def test_largest_valid_event_fits_its_payload_limit_and_round_trips(event: Event) -> None:
    data = encode(event)
    assert len(data) <= type(event).max_payload_bytes
    assert decode(type(event), data) == event


def test_every_event_type_is_covered_by_the_worst_case() -> None:
    assert {type(e) for e in largest_events()} == {
        InferenceLog,
        FeedbackEvent,
        TrainingExample,
        CheckpointEvent,
        VersionEvent,
        DeadLetter,
    }


def inference(**overrides: Any) -> bytes:
    fields: dict[str, Any] = COMMON | {
        "event_id": "e",
        "request_id": "r",
        "model": "m",
        "model_version": "v",
        "features": {},
        "prediction": 0,
    }
    return orjson.dumps(fields | overrides)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"features": {f"f{i}": i for i in range(L.MAX_FEATURES + 1)}}, "features"),
        ({"features": {"k" * (L.MAX_FEATURE_KEY_CHARS + 1): 1}}, "features." + "k" * 65),
        ({"features": {"": 1}}, "features."),
        ({"features": {"k": "v" * (L.MAX_VALUE_CHARS + 1)}}, "features.k"),
        ({"prediction": "p" * (L.MAX_VALUE_CHARS + 1)}, "prediction"),
        ({"scores": {f"s{i}": 0.5 for i in range(L.MAX_SCORES + 1)}}, "scores"),
        ({"scores": {"yes": 1.0000001}}, "scores.yes"),
        ({"scores": {"yes": -0.1}}, "scores.yes"),
        ({"event_id": ""}, "event_id"),
        ({"request_id": "r" * (L.MAX_ID_CHARS + 1)}, "request_id"),
        ({"model": "m" * (L.MAX_NAME_CHARS + 1)}, "model"),
        ({"ts": -1}, "ts"),
        ({"ts": L.MAX_TS_MS + 1}, "ts"),
        ({"route": "blue"}, "route"),
        ({"server": ""}, "server"),
    ],
)
def test_one_past_a_limit_is_rejected_with_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(SchemaError) as info:
        decode(InferenceLog, inference(**overrides))
    assert info.value.field == field


def test_limits_on_the_edge_are_accepted() -> None:
    event = decode(
        InferenceLog,
        inference(
            features={"k": L.MAX_INT, "j": L.MIN_INT, "v": "v" * L.MAX_VALUE_CHARS},
            scores={"a": 0.0, "b": 1.0},
            ts=0,
        ),
    )
    assert event.features["k"] == L.MAX_INT
    assert event.ts == 0


def test_integer_feature_beyond_64_bits_is_read_as_a_float() -> None:
    payload = inference(features={"big": L.MAX_INT + 1, "huge": 0}).replace(
        b'"huge":0', b'"huge":1' + b"0" * 30
    )
    event = decode(InferenceLog, payload)
    assert event.features == {"big": float(L.MAX_INT + 1), "huge": 1e30}
    assert all(type(v) is float for v in event.features.values())


def test_dead_letter_limit_is_larger_than_the_event_limit() -> None:
    letter = largest_events()[-1]
    assert len(encode(letter)) > L.MAX_EVENT_BYTES
    with pytest.raises(SchemaError, match="over the limit"):
        decode(DeadLetter, b" " * (L.MAX_DEAD_LETTER_BYTES + 1))
