"""Every dead letter fits the dead-letter topic, whatever the size of what it captures.

Guards issue 9, item 3: a 1.5 MB feature string and a 3 MB payload produced
dead letters of 2.0 and 2.8 MB that the producer refused, so the joiner agent
crashed and the records were lost without a dead letter. Now the raw value is
cut to a cap derived from the topic's ``max.message.bytes`` (base64 grows it
by 4/3, the envelope needs the rest) and its original size and sha256 stay.
"""

from __future__ import annotations

import hashlib
import random

import pytest

from schemas import limits as L
from schemas.codec import decode, encode
from schemas.events import DeadLetter
from services.deadletters import RawRecord, dead_letter

#: Characters JSON escapes to six bytes: the worst case for the envelope.
WORST = "\x01"

SIZES = {
    "event limit": L.MAX_EVENT_BYTES,
    "event limit + 1": L.MAX_EVENT_BYTES + 1,
    "3 MB": 3_000_000,
    "raw cap": L.MAX_DEAD_LETTER_RAW_BYTES,
    "raw cap + 1": L.MAX_DEAD_LETTER_RAW_BYTES + 1,
    "largest record value": L.MAX_RECORD_VALUE_BYTES,
    "10 MB": 10_000_000,
}


def _payload(size: int) -> bytes:
    return random.Random(size).randbytes(size)


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_a_dead_letter_of_any_record_fits_the_topic(size: int) -> None:
    value = _payload(size)
    topic = "t" * L.MAX_TOPIC_CHARS
    record = RawRecord(
        topic=topic,
        partition=2**31 - 1,
        offset=L.MAX_INT,
        key=b"k" * (L.MAX_DEAD_LETTER_KEY_BYTES + 5),
        value=value,
    )
    letter = dead_letter(
        record, WORST * L.MAX_TEXT_CHARS, kind="too_large", field=WORST * L.MAX_FIELD_PATH_CHARS
    )
    data = encode(letter)

    assert len(data) <= L.MAX_DEAD_LETTER_BYTES
    assert len(data) + L.RECORD_OVERHEAD_BYTES <= L.TOPIC_MAX_MESSAGE_BYTES  # key included
    assert letter.value_size == size
    assert letter.value_sha256 == hashlib.sha256(value).hexdigest()
    kept = letter.raw_value()
    assert value.startswith(kept)
    assert len(kept) == min(size, L.MAX_DEAD_LETTER_RAW_BYTES)
    assert letter.truncated  # the key is over its limit, the value perhaps too
    assert decode(DeadLetter, data) == letter


@pytest.mark.parametrize("size", [0, 124, L.MAX_EVENT_BYTES, L.MAX_DEAD_LETTER_RAW_BYTES])
def test_a_record_within_the_cap_is_kept_whole(size: int) -> None:
    value = _payload(size)
    letter = dead_letter(RawRecord("inference-logs", 0, 7, b"r", value), "late", kind="late")
    assert letter.raw_value() == value
    assert not letter.truncated
    assert (letter.value_size, letter.value_sha256) == (size, hashlib.sha256(value).hexdigest())


def test_a_value_cut_earlier_keeps_the_original_size_and_digest() -> None:
    original = _payload(50_000)
    letter = dead_letter(
        RawRecord("feedback", 1, 3, b"r", original[:8192]),
        "no inference log came within the window",
        kind="orphan",
        value_size=len(original),
        value_sha256=hashlib.sha256(original).hexdigest(),
    )
    assert letter.truncated
    assert letter.raw_value() == original[:8192]
    assert letter.value_size == 50_000
    assert letter.value_sha256 == hashlib.sha256(original).hexdigest()


def test_the_limits_agree() -> None:
    """One derivation: producers send, topics admit and consumers fetch the same records."""
    assert L.PRODUCER_MAX_REQUEST_BYTES >= L.TOPIC_MAX_MESSAGE_BYTES
    assert L.CONSUMER_MAX_PARTITION_FETCH_BYTES >= L.TOPIC_MAX_MESSAGE_BYTES
    assert L.MAX_EVENT_BYTES + L.RECORD_OVERHEAD_BYTES <= L.TOPIC_MAX_MESSAGE_BYTES
    assert L.base64_chars(L.MAX_DEAD_LETTER_RAW_BYTES) + L.DEAD_LETTER_ENVELOPE_BYTES <= (
        L.MAX_DEAD_LETTER_BYTES
    )
    assert L.MAX_EVENT_BYTES <= L.MAX_DEAD_LETTER_RAW_BYTES  # valid-size records kept whole
    assert L.TOPIC_MAX_MESSAGE_BYTES > 1024 * 1024  # above Apache Kafka's default
