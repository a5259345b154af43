"""The event models' own rules: names, cross-field checks, literals, helpers."""

from __future__ import annotations

import base64
from typing import Any, get_args

import pytest
from pydantic import ValidationError

from schemas.codec import decode, encode
from schemas.events import (
    EVENT_TYPES,
    CheckpointEvent,
    CheckpointTrigger,
    DeadLetter,
    FeedbackEvent,
    InferenceLog,
    Route,
    TrainingExample,
    VersionAction,
    VersionEvent,
    training_example_id,
)
from schemas.limits import MAX_DEAD_LETTER_RAW_BYTES, MAX_TEXT_CHARS
from services.config import TOPIC_NAMES


def example(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "request_id": "req-1",
        "model": "fraud",
        "model_version": "v7",
        "features": {"amount": 3.5},
        "label": 1,
        "inference_event_id": "inf-1",
        "feedback_event_id": "fb-1",
        "inference_ts": 1_000,
        "feedback_ts": 2_000,
        "join_latency_ms": 1_000,
    }
    fields |= overrides
    fields.setdefault("example_id", training_example_id("req-1", fields.get("feedback_event_id")))
    return fields


def test_new_fills_version_id_and_time() -> None:
    a = FeedbackEvent.new(request_id="r", model="m", label=True)
    b = FeedbackEvent.new(request_id="r", model="m", label=True)
    assert a.schema_version == 1
    assert a.event_id != b.event_id
    assert a.ts > 1_700_000_000_000
    assert FeedbackEvent.new(request_id="r", model="m", label=1, ts=5, event_id="e").ts == 5


def test_events_are_frozen() -> None:
    event = FeedbackEvent.new(request_id="r", model="m", label=1)
    with pytest.raises(ValidationError):
        event.label = 2


@pytest.mark.parametrize("name", ["", "../etc", "a/b", "fraud:v1", ".hidden", "-x", "a b", "é"])
def test_model_names_must_be_safe_as_path_and_redis_key(name: str) -> None:
    with pytest.raises(ValidationError) as info:
        FeedbackEvent.new(request_id="r", model=name, label=1)
    assert info.value.errors()[0]["loc"] == ("model",)


@pytest.mark.parametrize("name", ["fraud", "Fraud_v2", "m.1-b", "0", "v2025.10.01-rc1"])
def test_ordinary_names_are_accepted(name: str) -> None:
    assert FeedbackEvent.new(request_id="r", model=name, label=1).model == name


def test_training_example_id_is_deterministic_and_unambiguous() -> None:
    assert training_example_id("r", "f") == training_example_id("r", "f")
    ids = {
        training_example_id("ab", "c"),
        training_example_id("a", "bc"),
        training_example_id("abc", None),
        training_example_id("abc", ""),
        training_example_id("a", "b"),
        training_example_id("b", "a"),
    }
    assert len(ids) == 6


def test_training_example_with_feedback_is_accepted() -> None:
    event = TrainingExample.new(**example())
    assert not event.label_is_default
    assert decode(TrainingExample, encode(event)) == event


def test_default_label_example_has_no_feedback_fields() -> None:
    event = TrainingExample.new(
        **example(feedback_event_id=None, feedback_ts=None, label_is_default=True, label=0)
    )
    assert event.example_id == training_example_id("req-1", None)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"example_id": "made-up"}, "example_id must be"),
        ({"label_is_default": True}, "label_is_default must be true exactly"),
        ({"feedback_event_id": None, "feedback_ts": None}, "label_is_default must be true exactly"),
        ({"feedback_ts": None}, "both present or both absent"),
        ({"join_latency_ms": -1}, "greater than or equal to 0"),
    ],
)
def test_training_example_attribution_rules(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TrainingExample.new(**example(**overrides))


def test_literals_are_exported_as_aliases() -> None:
    assert set(get_args(Route)) == {"live", "canary", "shadow"}
    assert set(get_args(CheckpointTrigger)) == {
        "count",
        "drift",
        "interval",
        "metric",
        "shutdown",
        "manual",
        "config_change",
        "initial",
    }
    assert "pin" not in get_args(VersionAction)
    assert set(get_args(VersionAction)) == {
        "promote",
        "rollback",
        "canary",
        "shadow",
        "clear_canary",
        "clear_shadow",
    }


def version_event(**overrides: Any) -> VersionEvent:
    fields: dict[str, Any] = {"model": "fraud", "action": "promote", "live": "v2", "epoch": 3}
    return VersionEvent.new(**(fields | {"actor": "cli"} | overrides))


def test_pin_is_not_a_version_action() -> None:
    with pytest.raises(ValidationError):
        version_event(action="pin")


@pytest.mark.parametrize(
    ("field", "value"), [("canary_percent", 100.5), ("canary_percent", -1), ("epoch", -1)]
)
def test_version_event_ranges(field: str, value: float) -> None:
    with pytest.raises(ValidationError):
        version_event(**{field: value})


def test_version_event_defaults() -> None:
    event = version_event()
    assert (event.canary, event.canary_percent, event.shadow, event.reason) == (None, 0.0, None, "")


def checkpoint(**overrides: Any) -> CheckpointEvent:
    fields: dict[str, Any] = {
        "model": "fraud",
        "version": "v3",
        "step": 10,
        "examples_seen": 640,
        "trigger": "count",
        "location": "/ckpt/fraud/v3",
        "manifest_sha256": "ab" * 32,
    }
    return CheckpointEvent.new(**(fields | overrides))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("trigger", "cron"),
        ("manifest_sha256", "AB" * 32),
        ("manifest_sha256", "ab" * 31),
        ("metrics", {"auc": float("nan")}),
        ("location", ""),
        ("step", -1),
    ],
)
def test_checkpoint_event_rules(field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        checkpoint(**{field: value})
    assert info.value.errors()[0]["loc"][0] == field


def test_checkpoint_metrics_default_empty() -> None:
    assert checkpoint().metrics == {}
    assert checkpoint().parent_version is None


def test_dead_letter_capture_keeps_raw_bytes() -> None:
    raw = b'\xff{"not": json'
    letter = DeadLetter.capture(
        source_topic="feedback",
        source_partition=1,
        source_offset=9,
        value=raw,
        key=b"req-1",
        error="not valid UTF-8",
        error_kind="decode",
    )
    assert letter.raw_value() == raw
    assert letter.raw_key() == b"req-1"
    assert not letter.truncated
    assert decode(DeadLetter, encode(letter)) == letter


def test_dead_letter_capture_truncates_oversize_input() -> None:
    letter = DeadLetter.capture(
        source_topic="feedback",
        source_partition=0,
        source_offset=0,
        value=b"x" * (MAX_DEAD_LETTER_RAW_BYTES + 10),
        key=None,
        error="e\ud800" * MAX_TEXT_CHARS,
        error_kind="too_large",
        field="f" * 1000,
    )
    assert letter.truncated
    assert len(letter.raw_value()) == MAX_DEAD_LETTER_RAW_BYTES
    assert letter.raw_key() is None
    assert len(letter.error) == MAX_TEXT_CHARS
    assert "\ud800" not in letter.error
    assert decode(DeadLetter, encode(letter)) == letter


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("value_b64", "not base64!"),
        ("value_b64", "abc"),
        ("key_b64", "===="),
        ("error_kind", "Decode Error"),
        ("source_topic", "bad topic"),
        ("error", ""),
    ],
)
def test_dead_letter_rules(field: str, value: str) -> None:
    fields: dict[str, Any] = {
        "source_topic": "feedback",
        "source_partition": 0,
        "source_offset": 0,
        "value_b64": base64.b64encode(b"{}").decode(),
        "error": "x",
        "error_kind": "decode",
    }
    with pytest.raises(ValidationError) as info:
        DeadLetter.new(**(fields | {field: value}))
    assert info.value.errors()[0]["loc"] == (field,)


def test_every_contract_topic_has_an_event_type() -> None:
    assert set(EVENT_TYPES) == set(TOPIC_NAMES)
    assert EVENT_TYPES["feedback"] is FeedbackEvent
    assert EVENT_TYPES["inference_logs"] is InferenceLog
