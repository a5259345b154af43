"""The model server's routes over fakes (FastAPI TestClient, InMemoryPublisher)."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from fastapi.testclient import TestClient

from schemas.codec import encode
from schemas.events import Event, FeedbackEvent, InferenceLog
from services.publish.kafka import Record
from services.server.app import INLINE_INSTANCES
from services.server.routing import routes_to_canary
from tests.unit.server_fakes import Harness, harness, pointer


def _ready(h: Harness, **fields: Any) -> TestClient:
    h.reader.states["m"] = pointer(1, **fields)
    assert h.follower.check("m")
    return TestClient(h.app)


def _instances(n: int, prefix: str = "r") -> list[dict[str, Any]]:
    return [{"request_id": f"{prefix}-{i}", "features": {"x": float(i)}} for i in range(n)]


def _feedback(**over: Any) -> dict[str, Any]:
    event = FeedbackEvent.new(request_id="r-1", model="m", label=True).model_dump(mode="json")
    return event | over


def test_not_ready_until_a_pointer_applied() -> None:
    h = harness()
    client = TestClient(h.app)
    assert client.get("/healthz").status_code == 200
    r = client.get("/readyz")
    assert r.status_code == 503
    assert "m" in r.json()["error"]
    r = client.post("/v1/models/m:predict", json={"instances": _instances(1)})
    assert r.status_code == 503
    status = client.get("/v1/models/m").json()
    assert status["ready"] is False
    assert status["epoch"] is None


def test_predict_names_the_version_and_logs_every_prediction() -> None:
    h = harness()
    client = _ready(h)
    assert client.get("/readyz").status_code == 200
    r = client.post("/v1/models/m:predict", json={"instances": _instances(3)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == "v1"
    assert body["epoch"] == 1
    assert [p["prediction"] for p in body["predictions"]] == ["v1"] * 3
    assert [p["request_id"] for p in body["predictions"]] == ["r-0", "r-1", "r-2"]
    h.publisher.flush()
    logs = h.publisher.events(InferenceLog)
    assert [(e.request_id, e.model_version, e.route, e.server) for e in logs] == [
        (f"r-{i}", "v1", "live", "test-server") for i in range(3)
    ]
    assert logs[0].features == {"x": 0.0}


def test_inference_logs_are_the_bytes_the_codec_writes_and_decode_strictly() -> None:
    h = harness()
    raws: list[Record] = []
    publish_records = h.publisher.publish_records

    def keep(records: Sequence[Record], kind: type[Event] | None = None) -> None:
        raws.extend(records)
        publish_records(records, kind)  # decodes strictly: a log that is not valid fails here

    h.publisher.publish_records = keep  # type: ignore[method-assign]
    client = _ready(h)
    features = {"x": 2**70, "s": "a", "b": True, "i": 3}  # 2**70: kept as the nearest float
    body = {"instances": [{"features": features}, {"request_id": "r-9", "features": {"y": 1.5}}]}
    r = client.post("/v1/models/m:predict", json=body)
    assert r.status_code == 200, r.text
    h.publisher.flush()
    logs = h.publisher.events(InferenceLog)
    assert [log.features for log in logs] == [
        {"x": float(2**70), "s": "a", "b": True, "i": 3},
        {"y": 1.5},
    ]
    assert len({log.event_id for log in logs}) == 2
    for log, record in zip(logs, raws, strict=True):
        assert record.value == encode(log)  # what schemas.codec writes for the event
        assert record.key == log.request_id.encode()
        assert record.topic == h.publisher.topics.inference_logs


def test_a_batch_over_the_inline_limit_is_served_from_the_thread_pool_alike() -> None:
    h = harness()
    client = _ready(h)
    n = INLINE_INSTANCES + 1
    r = client.post("/v1/models/m:predict", json={"instances": _instances(n)})
    assert r.status_code == 200, r.text
    assert [p["request_id"] for p in r.json()["predictions"]] == [f"r-{i}" for i in range(n)]
    h.publisher.flush()
    assert len(h.publisher.events(InferenceLog)) == n


def test_a_missing_request_id_is_generated_returned_and_logged() -> None:
    h = harness()
    client = _ready(h)
    r = client.post("/v1/models/m:predict", json={"instances": [{"features": {"x": 1}}] * 2})
    ids = [p["request_id"] for p in r.json()["predictions"]]
    assert len(set(ids)) == 2
    assert all(ids)
    h.publisher.flush()
    assert [e.request_id for e in h.publisher.events(InferenceLog)] == ids


def test_canary_routing_is_deterministic_and_takes_its_share() -> None:
    h = harness()
    client = _ready(h, canary="v2", canary_percent=25.0)
    instances = _instances(400)
    first = client.post("/v1/models/m:predict", json={"instances": instances}).json()
    again = client.post("/v1/models/m:predict", json={"instances": instances}).json()
    routes = [(p["route"], p["model_version"], p["prediction"]) for p in first["predictions"]]
    assert routes == [
        (p["route"], p["model_version"], p["prediction"]) for p in again["predictions"]
    ]
    for inst, p in zip(instances, first["predictions"], strict=True):
        want = "canary" if routes_to_canary(inst["request_id"], 25.0) else "live"
        assert p["route"] == want
        assert p["model_version"] == p["prediction"] == ("v2" if want == "canary" else "v1")
    share = sum(p["route"] == "canary" for p in first["predictions"]) / 400
    assert 0.15 < share < 0.35
    assert first["model_version"] == "v1"


def test_shadow_is_logged_with_route_shadow_and_never_returned() -> None:
    h = harness()
    client = _ready(h, shadow="v3")
    body = client.post("/v1/models/m:predict", json={"instances": _instances(5)}).json()
    assert all(p["model_version"] == "v1" and p["prediction"] == "v1" for p in body["predictions"])
    assert "v3" not in str(body)
    h.publisher.flush()
    logs = h.publisher.events(InferenceLog)
    shadow = [e for e in logs if e.route == "shadow"]
    assert [(e.request_id, e.model_version, e.prediction) for e in shadow] == [
        (f"r-{i}", "v3", "v3") for i in range(5)
    ]
    assert len([e for e in logs if e.route == "live"]) == 5


def test_bad_features_are_422_naming_the_instance_and_nothing_is_logged() -> None:
    h = harness()
    client = _ready(h)
    instances = _instances(3)
    instances[2]["features"] = {"bad": 1.0}
    r = client.post("/v1/models/m:predict", json={"instances": instances})
    assert r.status_code == 422
    assert "instance 2" in r.json()["error"]
    h.publisher.flush()
    assert h.publisher.events(InferenceLog) == []


def test_unknown_model_and_batch_limits() -> None:
    h = harness(max_instances=10)
    client = _ready(h)
    r = client.post("/v1/models/nope:predict", json={"instances": _instances(1)})
    assert r.status_code == 404
    assert "nope" in r.json()["error"]
    assert client.get("/v1/models/nope").status_code == 404
    r = client.post("/v1/models/m:predict", json={"instances": _instances(11)})
    assert r.status_code == 422
    assert "at most 10" in r.json()["error"]
    r = client.post("/v1/models/m:predict", json={"instances": []})
    assert r.status_code == 422


def test_body_over_the_limit_is_413_with_a_clear_message() -> None:
    h = harness(max_body_bytes=4096)
    client = _ready(h)
    big = {"instances": [{"features": {f"f{i}": 1.0 for i in range(400)}}]}
    r = client.post("/v1/models/m:predict", json=big)
    assert r.status_code == 413
    assert "limit is 4096 bytes" in r.json()["error"]

    def chunks() -> Any:  # no Content-Length: counted as it arrives
        for _ in range(10):
            yield b" " * 1000

    r = client.post(
        "/v1/models/m:predict", content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413


def test_feedback_one_or_a_list_is_202_once_acknowledged() -> None:
    h = harness()
    client = _ready(h)
    r = client.post("/v1/feedback", json=_feedback())
    assert r.status_code == 202
    assert r.json() == {"accepted": 1}
    batch = [_feedback(event_id=uuid.uuid4().hex) for _ in range(3)]
    r = client.post("/v1/feedback", json=batch)
    assert r.status_code == 202
    assert r.json() == {"accepted": 3}
    assert len(h.publisher.events(FeedbackEvent)) == 4


def test_feedback_not_acknowledged_is_503_and_bad_feedback_is_4xx() -> None:
    h = harness()
    client = _ready(h)
    h.publisher.fail_next = True
    r = client.post("/v1/feedback", json=_feedback())
    assert r.status_code == 503
    assert "retry" in r.json()["error"]
    r = client.post("/v1/feedback", json=_feedback(label=None))
    assert r.status_code == 422
    assert r.json()["detail"]
    r = client.post("/v1/feedback", json=_feedback(model="other"))
    assert r.status_code == 404
    r = client.post("/v1/feedback", json=[])
    assert r.status_code == 422
    assert h.publisher.events(FeedbackEvent) == []


def test_status_and_metrics_report_the_applied_epoch() -> None:
    h = harness()
    before_ms = time.time_ns() // 1_000_000
    client = _ready(h, canary="v2", canary_percent=10.0, shadow="v3")
    status = client.get("/v1/models/m").json()
    assert before_ms <= status.pop("applied_ms") <= time.time_ns() // 1_000_000
    assert status | {"resident": sorted(status["resident"])} == {
        "name": "m",
        "ready": True,
        "epoch": 1,
        "live": "v1",
        "canary": "v2",
        "canary_percent": 10.0,
        "shadow": "v3",
        "resident": ["v1", "v2", "v3"],
        "last_error": None,
        "pointer_error": None,
        "pointer_missing": False,
        "server": "test-server",
    }
    text = client.get("/metrics").text
    assert 'driftloop_server_applied_epoch{model="m"} 1.0' in text
    assert 'driftloop_server_ready{model="m"} 1.0' in text


def test_a_failed_load_keeps_the_old_version_serving_and_is_reported() -> None:
    h = harness()
    client = _ready(h)
    h.loader.broken.add("v2")
    h.reader.states["m"] = pointer(2, live="v2", previous="v1")
    assert not h.follower.check("m")
    r = client.post("/v1/models/m:predict", json={"instances": _instances(1)})
    assert r.json()["model_version"] == "v1"
    assert r.json()["epoch"] == 1
    status = client.get("/v1/models/m").json()
    assert status["epoch"] == 1
    assert status["live"] == "v1"
    assert status["last_error"]["version"] == "v2"
    assert status["last_error"]["epoch"] == 2
    assert "sha256 mismatch" in status["last_error"]["error"]
    assert 'driftloop_server_load_failures_total{model="m"} 1.0' in client.get("/metrics").text
    # Fixed (e.g. a cold tier answering again): the next change applies and clears the error.
    h.loader.broken.clear()
    h.reader.states["m"] = pointer(3, live="v2", previous="v1")
    assert h.follower.check("m")
    status = client.get("/v1/models/m").json()
    assert (status["epoch"], status["live"], status["last_error"]) == (3, "v2", None)


def test_a_half_loaded_change_applies_nothing() -> None:
    h = harness()
    client = _ready(h)
    h.loader.broken.add("v3")
    h.reader.states["m"] = pointer(2, live="v2", canary="v3", canary_percent=50.0)
    assert not h.follower.check("m")
    status = client.get("/v1/models/m").json()
    assert (status["live"], status["canary"], status["epoch"]) == ("v1", None, 1)


def test_epoch_never_goes_backwards() -> None:
    h = harness()
    client = _ready(h)
    h.reader.states["m"] = pointer(5, live="v5")
    assert h.follower.check("m")
    h.reader.states["m"] = pointer(4, live="v4")
    assert not h.follower.check("m")
    assert not h.registry.apply(pointer(4, live="v4"))
    assert not h.registry.apply(pointer(5, live="v6"))  # same epoch: already applied
    body = client.post("/v1/models/m:predict", json={"instances": _instances(1)}).json()
    assert (body["epoch"], body["model_version"]) == (5, "v5")
    assert "v4" not in h.loader.loads


def test_rollback_to_a_resident_version_is_a_switch_not_a_load() -> None:
    h = harness(resident=2)
    _ready(h)
    h.reader.states["m"] = pointer(2, live="v2", previous="v1")
    assert h.follower.check("m")
    h.reader.states["m"] = pointer(3, live="v1", previous="v2")
    assert h.follower.check("m")
    assert h.loader.loads == ["v1", "v2"]
    h.reader.states["m"] = pointer(4, live="v3")
    assert h.follower.check("m")
    assert h.registry.resident_versions() == ["v1", "v3"]  # K=2: v2, least recently used, left


def test_swaps_are_atomic_under_concurrent_predictions() -> None:
    """While the pointer changes without pause, every response is entirely one epoch's:
    each prediction comes from the version that epoch names for its route."""
    h = harness()
    client = _ready(h, canary="c1", canary_percent=50.0)
    done = threading.Event()
    seen: list[dict[str, Any]] = []
    errors: list[str] = []

    def predict_loop() -> None:
        for _ in range(60):
            r = client.post("/v1/models/m:predict", json={"instances": _instances(8)})
            if r.status_code != 200:
                errors.append(r.text)
            else:
                seen.append(r.json())

    def swap_loop() -> None:
        epoch = 1
        while not done.is_set():
            epoch += 1
            h.registry.apply(
                pointer(epoch, live=f"v{epoch}", canary=f"c{epoch}", canary_percent=50.0)
            )

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show up
    swapper = threading.Thread(target=swap_loop)
    swapper.start()
    threads = [threading.Thread(target=predict_loop) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        done.set()
        swapper.join()
        sys.setswitchinterval(interval)
    assert not errors
    assert len({body["epoch"] for body in seen}) > 10  # swaps really happened meanwhile
    for body in seen:
        e = body["epoch"]
        for p in body["predictions"]:
            want = f"c{e}" if p["route"] == "canary" else (f"v{e}" if e > 1 else "v1")
            assert p["model_version"] == p["prediction"] == want, (e, p)


def test_openapi_documents_each_route_with_its_real_answers() -> None:
    spec = harness().app.openapi()
    answers = {
        (m.upper(), path): sorted(op["responses"])
        for path, ops in spec["paths"].items()
        for m, op in ops.items()
    }
    assert answers[("POST", "/v1/models/{model}:predict")] == [
        "200",
        "400",
        "404",
        "413",
        "422",
        "503",
    ]
    assert answers[("POST", "/v1/feedback")] == ["202", "400", "404", "413", "422", "503"]
    assert answers[("GET", "/healthz")] == ["200"]
    assert answers[("GET", "/readyz")] == ["200", "503"]
    body = spec["paths"]["/v1/models/{model}:predict"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PredictRequest"
    }


def test_a_feature_the_model_refuses_names_its_location() -> None:
    h = harness()
    client = _ready(h)
    instances = _instances(2)
    instances[1]["features"] = {"bad": 2.0}
    r = client.post("/v1/models/m:predict", json={"instances": instances})
    assert r.status_code == 422
    assert r.json()["detail"] == [
        {"loc": ["body", "instances", "1", "features", "bad"], "msg": "refused by the model"}
    ]


def test_a_version_that_fails_its_warm_up_is_never_swapped_in() -> None:
    h = harness()
    client = _ready(h)

    class Crashes:
        def predict_many(self, features: Any) -> Any:
            raise RuntimeError("segfault-ish")

    original = h.loader.load
    h.loader.load = lambda model, version: (
        Crashes() if version == "v2" else original(model, version)
    )  # type: ignore[method-assign]
    h.reader.states["m"] = pointer(2, live="v2")
    assert not h.follower.check("m")
    status = client.get("/v1/models/m").json()
    assert (status["epoch"], status["live"]) == (1, "v1")
    assert "segfault-ish" in status["last_error"]["error"]


def test_a_pointer_gone_from_redis_is_shown_and_the_applied_version_keeps_serving() -> None:
    h = harness()
    client = _ready(h)
    h.reader.states["m"] = None  # Redis flushed
    h.follower.check("m")
    status = client.get("/v1/models/m").json()
    assert (status["pointer_missing"], status["epoch"], status["live"]) == (True, 1, "v1")
    r = client.post("/v1/models/m:predict", json={"instances": _instances(1)})
    assert r.json()["model_version"] == "v1"
    h.reader.states["m"] = pointer(1, live="v1")  # restored: same epoch
    h.follower.check("m")
    assert client.get("/v1/models/m").json()["pointer_missing"] is False
