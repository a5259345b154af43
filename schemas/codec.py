"""Events to bytes and back: UTF-8 JSON written with orjson, validated strictly.

:func:`encode` turns an event into the bytes a producer writes;
:func:`decode` turns any input at all into the typed event or raises exactly
one exception type, :class:`~schemas.errors.SchemaError`, whose ``field`` is
the dotted path of the offending field (``""`` for the payload as a whole) and
whose ``reason`` says what is wrong. Nothing else escapes: not invalid UTF-8,
not malformed JSON, not a JSON array, not NaN, not an oversized payload.

The round-trip law holds for every valid event ``e``::

    decode(type(e), encode(e)) == e

Decoding parses and validates in one pass with pydantic-core
(``model_validate_json``); :func:`decode_via_orjson` does the same in two
steps (``orjson.loads``, then validation). ``benchmarks/codec.py`` measures
both: the one-pass path was 1.05-1.5x faster on every event type, and the
tests check that both accept and reject the same payloads, naming the same
field.
"""

from __future__ import annotations

import json
import math
from typing import Any, Final, TypeVar

import orjson
from pydantic import ValidationError

from schemas.errors import SchemaError
from schemas.events import Event
from schemas.limits import KNOWN_SCHEMA_VERSIONS, MAX_INT, MIN_INT

E = TypeVar("E", bound=Event)

#: Fields whose value is a map: an error inside one names ``field.key``.
_MAP_FIELDS: Final[frozenset[str]] = frozenset({"features", "scores", "metrics"})


def encode(event: Event) -> bytes:
    """The UTF-8 JSON bytes of ``event``, as written to its topic.

    Trusts that ``event`` was validated (models are frozen, so it stays
    valid unless one of its maps is mutated in place or it was built with
    ``model_construct``; orjson then writes a NaN as ``null``, which
    :func:`decode` rejects). Raises SchemaError for a value JSON cannot
    carry at all.
    """
    try:
        return orjson.dumps(event.model_dump())
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise SchemaError(f"cannot encode {type(event).__name__}: {exc}") from None


def decode(model_type: type[E], data: bytes | bytearray | memoryview | str) -> E:
    """The ``model_type`` event held in ``data``, or SchemaError saying why not.

    ``data`` is the raw message value (bytes) or already-decoded text. The
    size limit (``model_type.max_payload_bytes``, UTF-8 bytes) is checked
    before anything is parsed. Parsing and validation run in one pass in
    pydantic-core (``model_validate_json``), which measured faster than
    :func:`decode_via_orjson` and behaves the same (tests check both).
    """
    raw = _as_bytes(data, model_type.max_payload_bytes)
    try:
        return model_type.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            raise _parse_error(raw, str(first.get("ctx", {}).get("error", first["msg"]))) from None
        if first["type"] == "model_type":
            raise SchemaError(f"expected a JSON object, got {_json_type(first['input'])}") from None
        raise schema_error_from(exc) from None


def decode_via_orjson(model_type: type[E], data: bytes | bytearray | memoryview | str) -> E:
    """:func:`decode` as two steps: ``orjson.loads``, then validation of the Python objects.

    The reference behaviour :func:`decode` is tested against, and the second
    path ``benchmarks/codec.py`` measures. orjson rejects ``NaN``/``Infinity``
    at parse time; the field holding one is then found by re-reading the
    payload, so the error names it just as :func:`decode` does.
    """
    raw = _as_bytes(data, model_type.max_payload_bytes)
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _parse_error(raw, str(exc)) from None
    if not isinstance(obj, dict):
        raise SchemaError(f"expected a JSON object, got {_json_type(obj)}")
    try:
        return model_type.model_validate(obj)
    except ValidationError as exc:
        raise schema_error_from(exc) from None


def _as_bytes(data: bytes | bytearray | memoryview | str, limit: int) -> bytes:
    """``data`` as bytes within ``limit``, or SchemaError (checked before any parsing)."""
    if isinstance(data, str):
        if len(data) > limit:  # each character is at least one byte
            raise _too_big(len(data), limit, at_least=True)
        try:
            data = data.encode("utf-8")
        except UnicodeEncodeError:
            raise SchemaError("payload is not valid UTF-8 (lone surrogate)") from None
    elif not isinstance(data, bytes):
        if not isinstance(data, bytearray | memoryview):
            raise SchemaError(f"expected bytes or str, got {type(data).__name__}")
        data = bytes(data)
    if len(data) > limit:
        raise _too_big(len(data), limit)
    return data


def _too_big(size: int, limit: int, *, at_least: bool = False) -> SchemaError:
    more = "at least " if at_least else ""
    return SchemaError(f"payload is {more}{size} bytes, over the limit of {limit} bytes")


class _NonFinite:
    """Stands for a NaN/Infinity literal while locating a parse error."""

    def __init__(self, literal: str) -> None:
        self.literal = literal


def _parse_error(raw: bytes, message: str) -> SchemaError:
    """A SchemaError for a payload the JSON parser rejected, naming the field when it can.

    Called only on the failure path. JSON that is well-formed but for a
    ``NaN``/``Infinity`` literal or an integer beyond 64 bits is re-read with
    the standard library to find which field holds it.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return SchemaError(f"payload is not valid UTF-8 (byte {exc.start})")
    try:
        obj = json.loads(text, parse_constant=_NonFinite)
    except (ValueError, RecursionError):
        return SchemaError(f"not valid JSON: {message}")
    found = _find_unrepresentable(obj)
    if found is None:
        return SchemaError(f"not valid JSON: {message}")
    path, what = found
    return SchemaError(what, field=path)


def _find_unrepresentable(obj: Any) -> tuple[str, str] | None:
    """(dotted path, reason) of the first non-finite or over-64-bit number in ``obj``."""
    stack: list[tuple[str, Any]] = [("", obj)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, _NonFinite):
            return _field_path(path), "must be a finite number"
        if isinstance(value, float) and not math.isfinite(value):
            return _field_path(path), "must be a finite number"
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and not MIN_INT <= value <= MAX_INT
        ):
            return _field_path(path), "integer out of the signed 64-bit range"
        if isinstance(value, dict):
            items = [(f"{path}.{k}" if path else k, v) for k, v in value.items()]
            stack.extend(reversed(items))
        elif isinstance(value, list):
            stack.extend(reversed([(f"{path}.{i}", v) for i, v in enumerate(value)]))
    return None


def _field_path(path: str) -> str:
    """A raw dotted path cut to what :func:`schema_error_from` would name."""
    parts = path.split(".", 2)
    if len(parts) > 1 and parts[0] in _MAP_FIELDS:
        return ".".join(parts[:2])
    return parts[0]


def schema_error_from(exc: ValidationError) -> SchemaError:
    """One SchemaError for pydantic's ValidationError: the first field, in words.

    A union (a feature value, a label) fails once per alternative; those
    errors are merged so the reason is the specific one (``must be a finite
    number``) rather than "not a boolean".
    """
    errors = exc.errors(include_url=False, include_input=False)
    loc = errors[0]["loc"]
    field = _loc_to_field(loc)
    same = [e for e in errors if _loc_to_field(e["loc"]) == field]
    specific = [e for e in same if not e["type"].endswith("_type")]
    chosen = specific[0] if specific else same[0]
    reason = _reason(field, chosen, union=len(same) > 1 and not specific)
    return SchemaError(reason, field=field, model_type=exc.title)


def _loc_to_field(loc: tuple[int | str, ...]) -> str:
    if not loc:
        return ""
    head = str(loc[0])
    if head in _MAP_FIELDS and len(loc) > 1:
        return f"{head}.{loc[1]}"
    return head


def _reason(field: str, error: Any, *, union: bool) -> str:
    kind = error["type"]
    if field == "schema_version" and kind in ("greater_than_equal", "less_than_equal"):
        return f"unknown schema_version; this build knows {sorted(KNOWN_SCHEMA_VERSIONS)}"
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field"
    if union:
        return "must be a finite number, a string or a boolean"
    if kind == "finite_number":
        return "must be a finite number"
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, ")
    if error["loc"] and str(error["loc"][-1]) == "[key]":
        return f"key: {error['msg']}"
    return str(error["msg"])


def _json_type(obj: Any) -> str:
    if isinstance(obj, list):
        return "an array"
    if isinstance(obj, str):
        return "a string"
    if isinstance(obj, bool):
        return "a boolean"
    if obj is None:
        return "null"
    return "a number"
