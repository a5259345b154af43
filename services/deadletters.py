"""Turning a record an agent cannot use into a DeadLetter, the same way everywhere.

Every agent reads raw Kafka records; when one does not decode, does not
validate, or is refused by the agent's logic (late, duplicate, orphan), the
agent calls :func:`dead_letter` and writes the result to ``dead-letters``
(keyed by the source topic) instead of stopping. The DeadLetter keeps the raw
key and value (base64), the source topic / partition / offset, a reason for a
human and a machine-readable ``error_kind``.

:func:`decode_or_dead_letter` is the usual entry point: the typed event, or
the DeadLetter saying why not::

    got = decode_or_dead_letter(InferenceLog, RawRecord.of(message))
    if isinstance(got, DeadLetter):
        await dead_letters.send(key=got.source_topic, value=encode(got))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from schemas.codec import decode
from schemas.errors import DriftloopError, SchemaError
from schemas.events import DeadLetter, Event

E = TypeVar("E", bound=Event)


@dataclass(frozen=True)
class RawRecord:
    """A Kafka record as read, before decoding: where it came from and its bytes."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    @classmethod
    def of(cls, message: Any) -> RawRecord:
        """Wrap anything with ``topic``, ``partition``, ``offset``, ``key`` and
        ``value`` attributes: a faust ``Message``, a kafka-python or aiokafka
        ``ConsumerRecord``."""
        return cls(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=_as_bytes(message.key),
            value=_as_bytes(message.value),
        )


def _as_bytes(data: Any) -> bytes | None:
    if data is None or isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    if isinstance(data, str):
        return data.encode("utf-8", "replace")
    raise TypeError(f"expected raw bytes, got {type(data).__name__} (use the raw serializer)")


def error_kind_of(error: BaseException) -> str:
    """The ``error_kind`` for an exception raised while handling a record.

    ``decode`` when the payload as a whole is unreadable (not UTF-8, not JSON,
    not an object), ``too_large`` when it is over the size limit,
    ``validation`` when a field is wrong (including an unknown
    ``schema_version`` and NaN numbers), ``processing`` for anything else.
    """
    if isinstance(error, SchemaError):
        if error.field:
            return "validation"
        if "over the limit" in error.reason:
            return "too_large"
        if error.reason.startswith(("payload is", "not valid JSON", "expected")):
            return "decode"
        return "validation"
    return "processing"


def dead_letter(
    record: RawRecord,
    error: BaseException | str,
    *,
    kind: str | None = None,
    field: str | None = None,
    ts: int | None = None,
    value_size: int | None = None,
    value_sha256: str | None = None,
) -> DeadLetter:
    """The DeadLetter for ``record``, refused because of ``error``.

    Parameters
    ----------
    record
        The raw record as read (a missing value is kept as empty bytes).
    error
        The exception raised while handling it, or a reason in words.
    kind
        ``error_kind``; by default :func:`error_kind_of` the exception
        (``processing`` for a plain string).
    field
        The offending field; by default the SchemaError's ``field``.
    ts
        The dead letter's ``ts``; by default now.
    value_size, value_sha256
        Size and sha256 of the original value when ``record.value`` holds only
        its start (cut before it got here); by default those of ``record.value``.

    The dead letter always fits the dead-letter topic: a value over
    :data:`~schemas.limits.MAX_DEAD_LETTER_RAW_BYTES` is cut (``truncated``),
    its size and sha256 kept.
    """
    if isinstance(error, BaseException):
        resolved_kind = kind or error_kind_of(error)
        if isinstance(error, SchemaError):
            reason = str(error)
            field = field if field is not None else (error.field or None)
        elif isinstance(error, DriftloopError):
            reason = str(error)
        else:
            reason = f"{type(error).__name__}: {error}"
    else:
        resolved_kind = kind or "processing"
        reason = error
    common: dict[str, Any] = {} if ts is None else {"ts": ts}
    return DeadLetter.capture(
        source_topic=record.topic,
        source_partition=record.partition,
        source_offset=record.offset,
        value=record.value if record.value is not None else b"",
        key=record.key,
        error=reason,
        error_kind=resolved_kind,
        field=field,
        value_size=value_size,
        value_sha256=value_sha256,
        **common,
    )


def decode_or_dead_letter(model_type: type[E], record: RawRecord) -> E | DeadLetter:
    """``record``'s value decoded as ``model_type``, or the DeadLetter saying why not.

    Never raises for bad input: garbage bytes, wrong JSON, NaN features, an
    unknown ``schema_version`` or a missing value all become dead letters.
    """
    if record.value is None:
        return dead_letter(record, "record has no value (tombstone)", kind="decode")
    try:
        return decode(model_type, record.value)
    except SchemaError as exc:
        return dead_letter(record, exc)
