"""Canary routing: a stable, documented, salted hash of request_id."""

from __future__ import annotations

import hashlib
import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from services.server.routing import (
    BUCKETS,
    CANARY_SALT,
    HOLDOUT_SALT,
    bucket,
    in_holdout,
    routes_to_canary,
)

IDS = [f"req-{i}" for i in range(40_000)]


def test_bucket_is_the_documented_formula() -> None:
    digest = hashlib.blake2b(b"canary\x00req-1", digest_size=8).digest()
    assert bucket("canary", "req-1") == int.from_bytes(digest, "big") % 10_000


def test_bucket_is_the_same_in_another_process() -> None:
    # Python's hash() would differ here (PYTHONHASHSEED is random per process).
    code = "from services.server.routing import bucket; print(bucket('canary', 'req-42'))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert int(out) == bucket("canary", "req-42")


@given(st.text(max_size=200), st.floats(min_value=0, max_value=100))
def test_the_same_request_always_gets_the_same_route(request_id: str, percent: float) -> None:
    assert routes_to_canary(request_id, percent) == routes_to_canary(request_id, percent)
    assert 0 <= bucket(CANARY_SALT, request_id) < BUCKETS


def test_share_matches_the_percent_and_grows_monotonically() -> None:
    for percent in (1.0, 10.0, 50.0):
        share = sum(routes_to_canary(r, percent) for r in IDS) / len(IDS)
        assert abs(share - percent / 100) < 0.01, (percent, share)
    # Raising the percent only adds requests to the canary, never moves others out.
    at10 = {r for r in IDS if routes_to_canary(r, 10.0)}
    at20 = {r for r in IDS if routes_to_canary(r, 20.0)}
    assert at10 <= at20
    assert not any(routes_to_canary(r, 0.0) for r in IDS)
    assert all(routes_to_canary(r, 100.0) for r in IDS)


def test_canary_and_holdout_shares_are_independent() -> None:
    canary = {r for r in IDS if routes_to_canary(r, 20.0)}
    holdout = {r for r in IDS if in_holdout(r, 20.0)}
    both = len(canary & holdout) / len(IDS)
    # Independent: P(both) = 0.2 * 0.2 = 0.04; the same salt would give 0.2.
    assert abs(both - 0.04) < 0.01, both
    assert CANARY_SALT != HOLDOUT_SALT
