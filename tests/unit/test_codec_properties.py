"""Properties of the codec over generated input (hypothesis).

- every valid event of every type round-trips through encode/decode unchanged;
- arbitrary bytes, arbitrary JSON and almost-valid events either decode to a
  valid event or raise SchemaError, never anything else;
- the one-pass decoder and the orjson reference decoder agree on all of it.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import decode, decode_via_orjson, encode
from schemas.errors import SchemaError
from schemas.events import Event
from schemas.strategies import EVENT_STRATEGIES, events

EVENT_TYPES = list(EVENT_STRATEGIES)
MODERATE = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Any JSON value, including what orjson refuses (NaN, infinities, integers
# beyond 64 bits, lone surrogates once serialized).
ANY_TEXT = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=[]))
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(ANY_TEXT, children, max_size=4)
    ),
    max_leaves=16,
)


def serialize(value: Any, ascii_only: bool) -> bytes:
    """JSON text of ``value`` as a careless producer would write it."""
    text = json.dumps(value, allow_nan=True, ensure_ascii=ascii_only)
    return text.encode("utf-8", "surrogatepass")


def outcome(model: type[Event], data: bytes, decoder: Any = decode) -> bytes | SchemaError:
    """The re-encoded event, or the SchemaError; any other exception fails the test."""
    try:
        event = decoder(model, data)
    except SchemaError as exc:
        error = exc
    else:
        assert isinstance(event, model)
        return encode(event)
    assert isinstance(error.field, str)
    assert error.reason
    return error


def assert_paths_agree(model: type[Event], data: bytes) -> None:
    one_pass = outcome(model, data)
    two_step = outcome(model, data, decode_via_orjson)
    if isinstance(one_pass, bytes) or isinstance(two_step, bytes):
        assert one_pass == two_step


@MODERATE
@given(events())
def test_every_valid_event_round_trips_unchanged(event: Event) -> None:
    data = encode(event)
    decoded = decode(type(event), data)
    assert decoded == event
    # == says True == 1; the bytes also keep a bool a bool and a float a float.
    assert encode(decoded) == data
    assert decode_via_orjson(type(event), data) == event


@MODERATE
@given(events())
def test_decoding_str_equals_decoding_bytes(event: Event) -> None:
    data = encode(event)
    assert decode(type(event), data.decode("utf-8")) == event


@pytest.mark.parametrize("model", EVENT_TYPES, ids=lambda m: m.__name__)
@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=512))
def test_arbitrary_bytes_decode_or_raise_schema_error(model: type[Event], data: bytes) -> None:
    assert_paths_agree(model, data)


@pytest.mark.parametrize("model", EVENT_TYPES, ids=lambda m: m.__name__)
@settings(max_examples=40, deadline=None)
@given(value=JSON_VALUES, ascii_only=st.booleans())
def test_arbitrary_json_decodes_or_raises_schema_error(
    model: type[Event], value: Any, ascii_only: bool
) -> None:
    assert_paths_agree(model, serialize(value, ascii_only))


def _mutations(event: Event) -> st.SearchStrategy[dict[str, Any]]:
    """The event's fields with one thing broken: a field dropped, replaced or added."""
    fields = event.model_dump()
    names = sorted(fields)
    dropped = st.sampled_from(names).map(lambda k: {n: v for n, v in fields.items() if n != k})
    replaced = st.tuples(st.sampled_from(names), JSON_VALUES).map(
        lambda kv: fields | {kv[0]: kv[1]}
    )
    added = st.tuples(ANY_TEXT, JSON_VALUES).map(lambda kv: fields | {kv[0]: kv[1]})
    in_map = st.tuples(ANY_TEXT, JSON_VALUES).map(
        lambda kv: fields | {"features": {**fields.get("features", {}), kv[0]: kv[1]}}
    )
    return st.one_of(dropped, replaced, added, in_map)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_almost_valid_events_decode_or_raise_schema_error(data: st.DataObject) -> None:
    event = data.draw(events())
    broken = data.draw(_mutations(event))
    payload = serialize(broken, data.draw(st.booleans()))
    assert_paths_agree(type(event), payload)
    result = outcome(type(event), payload)
    if isinstance(result, SchemaError) and result.field:
        # The named field is one the payload has or the model requires. Keys may
        # themselves contain dots, so match on prefixes rather than splitting.
        named = result.field
        assert any(named == key or named.startswith(f"{key}.") for key in broken) or (
            named.split(".", 1)[0] in type(event).model_fields
        )


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_non_finite_numbers_are_always_rejected(data: st.DataObject) -> None:
    event = data.draw(events())
    fields = event.model_dump()
    number_fields = [k for k, v in fields.items() if isinstance(v, float)]
    target = data.draw(st.sampled_from([*number_fields, "ts"]))
    bad = data.draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    payload = serialize(fields | {target: bad}, ascii_only=True)
    for decoder in (decode, decode_via_orjson):
        with pytest.raises(SchemaError) as info:
            decoder(type(event), payload)
        assert info.value.field == target
