"""``DRIFTLOOP_SERVER_LOG_INFERENCES=false``: predictions answered, none logged."""

from __future__ import annotations

from fastapi.testclient import TestClient

from schemas.events import InferenceLog
from tests.unit.server_fakes import harness, pointer


def test_with_logging_off_predictions_are_answered_and_counted_but_not_logged() -> None:
    h = harness(log_inferences=False)
    h.reader.states["m"] = pointer(1)
    assert h.follower.check("m")
    client = TestClient(h.app)
    r = client.post(
        "/v1/models/m:predict",
        json={"instances": [{"request_id": f"r-{i}", "features": {"x": 1.0}} for i in range(3)]},
    )
    assert r.status_code == 200, r.text
    assert [p["model_version"] for p in r.json()["predictions"]] == ["v1"] * 3
    h.publisher.flush()
    assert h.publisher.events(InferenceLog) == []
    assert 'driftloop_server_predictions_total{model="m",route="live",version="v1"} 3.0' in (
        client.get("/metrics").text
    )


def test_logging_is_on_by_default() -> None:
    h = harness()
    h.reader.states["m"] = pointer(1)
    assert h.follower.check("m")
    r = TestClient(h.app).post("/v1/models/m:predict", json={"instances": [{"features": {}}]})
    assert r.status_code == 200, r.text
    h.publisher.flush()
    assert len(h.publisher.events(InferenceLog)) == 1
