"""Bad records become DeadLetters with their reason, source and raw bytes."""

from __future__ import annotations

import pytest

from schemas.codec import encode
from schemas.events import DeadLetter, FeedbackEvent, InferenceLog
from services.deadletters import RawRecord, dead_letter, decode_or_dead_letter

GOOD = encode(
    InferenceLog.new(
        request_id="r", model="m", model_version="v", features={"x": 1.0}, prediction=1
    )
)


@pytest.mark.parametrize(
    ("value", "kind", "field"),
    [
        (b"\xff\xfe garbage", "decode", None),
        (b'{"schema_version": 1,', "decode", None),
        (b"[1, 2]", "decode", None),
        (GOOD.replace(b'"x":1.0', b'"x":NaN'), "validation", "features.x"),
        (
            GOOD.replace(b'"schema_version":1', b'"schema_version":7'),
            "validation",
            "schema_version",
        ),
        (b"x" * (3 * 1024 * 1024), "too_large", None),
    ],
)
def test_bad_values_become_dead_letters(value: bytes, kind: str, field: str | None) -> None:
    record = RawRecord(topic="t.inference-logs", partition=2, offset=41, key=b"r", value=value)
    got = decode_or_dead_letter(InferenceLog, record)
    assert isinstance(got, DeadLetter)
    assert (got.error_kind, got.field) == (kind, field)
    assert (got.source_topic, got.source_partition, got.source_offset) == (
        "t.inference-logs",
        2,
        41,
    )
    assert got.raw_key() == b"r"
    assert value.startswith(got.raw_value())
    assert got.error


def test_good_values_decode() -> None:
    record = RawRecord(topic="t", partition=0, offset=0, key=None, value=GOOD)
    assert isinstance(decode_or_dead_letter(InferenceLog, record), InferenceLog)


def test_a_record_without_value_is_a_decode_dead_letter() -> None:
    got = decode_or_dead_letter(FeedbackEvent, RawRecord("t", 0, 3, None, None))
    assert isinstance(got, DeadLetter)
    assert got.error_kind == "decode"
    assert got.raw_key() is None


def test_refusals_in_words_keep_their_kind() -> None:
    letter = dead_letter(
        RawRecord("fb", 1, 9, b"k", b"v"), "feedback after its window", kind="late"
    )
    assert (letter.error_kind, letter.error, letter.raw_value()) == (
        "late",
        "feedback after its window",
        b"v",
    )


def test_unexpected_exceptions_are_processing_errors() -> None:
    letter = dead_letter(RawRecord("fb", 1, 9, None, b"v"), RuntimeError("boom"))
    assert letter.error_kind == "processing"
    assert "RuntimeError: boom" in letter.error
