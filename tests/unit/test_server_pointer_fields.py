"""How the pointer hash's string fields parse (services.pointer.base formats).

One parser for writers and model servers: services.pointer.redis.parse_state.
"""

from __future__ import annotations

import pytest

from services.pointer.base import PointerError, PointerState
from services.pointer.redis import parse_state as parse_pointer
from services.server.routing import routes_to_canary


def test_fields_parse_per_the_documented_formats() -> None:
    fields = {
        "live": "m-000002",
        "previous": "m-000001",
        "canary": "m-000003",
        "canary_percent": "12.5",
        "shadow": "",
        "epoch": "7",
    }
    assert parse_pointer("m", fields, ["m-000001", "m-000000"]) == PointerState(
        model="m",
        epoch=7,
        live="m-000002",
        previous="m-000001",
        canary="m-000003",
        canary_percent=12.5,
        shadow=None,
        history=("m-000001", "m-000000"),
    )


def test_no_hash_is_no_pointer_and_absent_fields_are_none() -> None:
    assert parse_pointer("m", {}, []) is None
    state = parse_pointer("m", {"epoch": "1", "live": "m-000001"}, [])
    assert state is not None
    assert (state.canary, state.canary_percent, state.shadow) == (None, 0.0, None)


@pytest.mark.parametrize(
    "fields",
    [
        {"live": "m-1"},
        {"epoch": "x"},
        {"epoch": "1.5"},
        {"epoch": "-1"},
        {"epoch": "1", "canary_percent": "nan"},
        {"epoch": "1", "canary_percent": "150"},
        {"epoch": "1", "canary_percent": "lots"},
    ],
)
def test_fields_that_do_not_parse_are_cannot_tell(fields: dict[str, str]) -> None:
    with pytest.raises(PointerError):
        parse_pointer("m", fields, [])


def test_routing_tolerates_any_percent() -> None:
    assert not routes_to_canary("r", float("nan"))
    assert not routes_to_canary("r", -5.0)
    assert routes_to_canary("r", 250.0)
