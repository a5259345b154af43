"""Hostile input at every endpoint of the model server: never a 500, never a dead worker.

Malformed JSON, wrong types, NaN and infinities, oversized bodies, deep nesting,
unknown models, huge batches. Allowed answers: 2xx for what is valid, 4xx saying
what is wrong, 503 while the model is not ready (the not-ready app is fuzzed too).
After every example the app still serves a valid prediction.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.server_fakes import harness, pointer

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
features = st.dictionaries(
    st.text(max_size=20),
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=20)
    | st.lists(st.integers(), max_size=2),
    max_size=6,
)
instance = st.fixed_dictionaries(
    {"features": features},
    optional={"request_id": st.one_of(st.text(max_size=300), st.integers(), st.none())},
)
predict_bodies = st.one_of(
    st.fixed_dictionaries({"instances": st.lists(instance, max_size=5)}),
    st.fixed_dictionaries({"instances": json_values}),
    json_values,
)
feedback_one = st.fixed_dictionaries(
    {
        "schema_version": st.sampled_from([1, 2, "1", None]),
        "event_id": st.text(max_size=5),
        "ts": st.one_of(st.integers(min_value=-5, max_value=2**70), st.floats()),
        "request_id": st.text(max_size=5),
        "model": st.sampled_from(["m", "other", "", "a/b"]),
        "label": st.one_of(st.booleans(), st.floats(), st.text(max_size=3), st.none()),
    },
    optional={"weight": st.floats(), "kind": st.text(max_size=10), "extra": json_values},
)
feedback_bodies = st.one_of(feedback_one, st.lists(feedback_one, max_size=3), json_values)
models = st.sampled_from(["m", "nope", "m%00", "..", "x" * 300, "%F0%9F%92%A5"])
raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.sampled_from(
        [
            b'{"instances": [{"features": {"x": NaN}}]}',
            b'{"instances": [{"features": {"x": Infinity}}]}',
            b'{"instances": [{"features": {"x": 1e999}}]}',
            b"[" * 50_000,
            b'{"instances": [' + b'{"features": {}},' * 60_000 + b'{"features": {}}]}',
            b'{"instances": [{"features": {"x": 1}}]',
            b'\xff\xfe{"instances": []}',
        ]
    ),
)


@pytest.fixture(scope="module", params=["ready", "not_ready"])
def client(request: pytest.FixtureRequest) -> Any:
    h = harness(max_body_bytes=2 * 1024 * 1024)
    if request.param == "ready":
        h.reader.states["m"] = pointer(1, canary="v2", canary_percent=30.0, shadow="v3")
        assert h.follower.check("m")
    client = TestClient(h.app, raise_server_exceptions=True)
    client.ready = request.param == "ready"  # type: ignore[attr-defined]
    return client


def _check(client: Any, r: Any) -> None:
    assert r.status_code < 500 or (r.status_code == 503 and not client.ready), (
        r.status_code,
        r.text[:500],
    )
    assert r.headers["content-type"].startswith(("application/json", "text/plain"))
    if r.status_code >= 400:
        assert r.json()["error"]
    if client.ready:  # still alive and serving
        ok = client.post("/v1/models/m:predict", json={"instances": [{"features": {"x": 1}}]})
        assert ok.status_code == 200


FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(model=models, body=predict_bodies)
def test_predict_json(client: Any, model: str, body: Any) -> None:
    _check(client, client.post(f"/v1/models/{model}:predict", content=json.dumps(body).encode()))


@FUZZ
@given(model=models, body=raw_bodies)
def test_predict_raw(client: Any, model: str, body: bytes) -> None:
    r = client.post(
        f"/v1/models/{model}:predict", content=body, headers={"content-type": "application/json"}
    )
    _check(client, r)


@FUZZ
@given(body=st.one_of(feedback_bodies.map(lambda b: json.dumps(b).encode()), raw_bodies))
def test_feedback(client: Any, body: bytes) -> None:
    r = client.post("/v1/feedback", content=body, headers={"content-type": "application/json"})
    _check(client, r)


@FUZZ
@given(model=models, method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]), body=raw_bodies)
def test_other_routes(client: Any, model: str, method: str, body: bytes) -> None:
    for path in (f"/v1/models/{model}", "/healthz", "/readyz", "/metrics", f"/{model}"):
        r = client.request(method, path, content=body if method != "GET" else None)
        assert r.status_code < 500 or (r.status_code == 503 and path == "/readyz"), (
            path,
            r.status_code,
            r.text[:300],
        )


def test_oversized_body_is_413(client: Any) -> None:
    body = b'{"instances": [' + b'{"features": {"x": 1.0}},' * 200_000 + b"{}]}"
    r = client.post(
        "/v1/models/m:predict", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413
    r = client.post("/v1/feedback", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413
