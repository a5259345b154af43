"""The model server's HTTP API (KServe v1 style), as a FastAPI app factory.

Routes (see ARCHITECTURE.md, "Model server HTTP"):

- ``GET /v1/models/{model}``: the versions served, the pointer epoch applied,
  readiness, resident versions and the last load error;
- ``POST /v1/models/{model}:predict``: predictions for a batch of instances.
  Each request id (generated when absent) picks live or canary by
  :func:`~services.server.routing.routes_to_canary`; the shadow version, when
  set, predicts every instance too, and its predictions are logged with
  ``route=shadow`` and never returned. Every prediction is logged as an
  :class:`~schemas.events.InferenceLog` naming version, route and server through
  the injected publisher (``publish`` only queues: a bounded, batching producer
  sends them); a log that cannot be queued is counted, the answer stands;
- ``POST /v1/feedback``: one FeedbackEvent or a list; 202 once the publisher's
  ``publish_acked`` returned (broker acknowledged or spool fsynced), 503 when it
  raised, 4xx saying what is wrong;
- ``GET /healthz`` (the process answers), ``GET /readyz`` (every model has a live
  version loaded; 503 otherwise), ``GET /metrics`` (Prometheus).

A predict call of at most :data:`INLINE_INSTANCES` instances runs on the event
loop (a batch of 32 took 0.25-0.4 ms to predict here); handing it to a worker
thread and back cost more than that: two thread switches, each waiting for the
GIL behind the loop, the inference-log sender and the other workers (single
instances under closed-loop load: inline took 0.75-0.84 ms of server CPU per
call and 4.3-4.9 ms p50, the thread pool 1.06-1.42 ms and 5.9-6.9 ms). Larger
batches run in FastAPI's thread pool, so they never block the loop. The other
handlers are plain functions (thread pool). Each request reads the registry's
serving snapshot once, so all its instances see one consistent set of versions.

Bad input is a 4xx with what is wrong, never a 500: bodies over the size limit
get 413 (:class:`~services.server.limits.BodyLimit`), bodies that do not
validate 422 with each error's location and message (inputs are not echoed),
unknown models 404, batches over the configured limits 422, and a model that
is not ready 503.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol

import orjson
from fastapi import Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from schemas import limits as L
from schemas.errors import SchemaError
from schemas.events import Event, FeedbackEvent, InferenceLog
from services.config import TopicsConfig
from services.learning.adapters import PredictError, Prediction
from services.learning.hashing import FeatureValue
from services.publish.base import DurablePublisher, PublishError
from services.publish.feedback import validate_feedback
from services.publish.kafka import Record
from services.server.config import ServerConfig
from services.server.follower import PointerFollower
from services.server.limits import BodyLimit
from services.server.metrics import ServerMetrics
from services.server.registry import ModelRegistry, Resident, Serving
from services.server.routing import routes_to_canary
from services.server.schemas import (
    ErrorBody,
    FeedbackAccepted,
    Instance,
    LoadError,
    ModelStatus,
    PredictionOut,
    PredictRequest,
    PredictResponse,
)

log = logging.getLogger(__name__)

#: Predict calls of at most this many instances run on the event loop (module notes).
INLINE_INSTANCES = 64


#: (model, version, route) -> the common fields of its inference logs, validated once.
_LogTemplates = dict[tuple[str, str, str], dict[str, Any]]


class LogPublisher(DurablePublisher, Protocol):
    """The server's publisher: also takes inference logs already encoded (the
    :class:`~services.publish.spooled.SpooledPublisher`, the in-memory one in tests)."""

    topics: TopicsConfig

    def publish_record(self, record: Record, kind: type[Event] | None = None) -> None: ...


@dataclass
class ServerContext:
    """Everything the app serves from (injected: fakes in unit tests)."""

    config: ServerConfig
    registries: Mapping[str, ModelRegistry]
    publisher: LogPublisher
    metrics: ServerMetrics
    follower: PointerFollower | None = None
    #: Called in order when the app stops, after the last flush (publisher, store, Redis).
    closers: list[Callable[[], None]] = field(default_factory=list)
    #: The common fields of inference logs per (model, version, route) (:func:`_log_fields`).
    log_templates: _LogTemplates = field(default_factory=dict)

    @property
    def inference_log_topic(self) -> str:
        return self.publisher.topics.name(InferenceLog.topic)


class _Refused(Exception):
    """An HTTP error with a JSON body (status, message, optional details)."""

    def __init__(self, status: int, message: str, detail: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail


def _error(status: int, message: str, detail: list[dict[str, Any]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(body, status_code=status)


def _validation_detail(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Each error's location, message and type; never its input (it may be huge or NaN)."""
    out = []
    for e in errors[:20]:
        out.append(
            {
                "loc": [str(p) for p in e.get("loc", ())],
                "msg": str(e.get("msg", ""))[:500],
                "type": str(e.get("type", "")),
            }
        )
    return out


def label_key(label: Any) -> str:
    """How a class label names a score: booleans ``true`` / ``false``, else ``str``."""
    if isinstance(label, bool):
        return "true" if label else "false"
    return str(label)


def _scalar(value: Any) -> bool | int | float | str | None:
    """A prediction as the contract's Scalar (None when it is not one)."""
    if value is None or isinstance(value, bool | str):
        return value if not isinstance(value, str) or len(value) <= L.MAX_VALUE_CHARS else None
    if isinstance(value, int):
        return value if L.MIN_INT <= value <= L.MAX_INT else float(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)[: L.MAX_VALUE_CHARS]


def _scores(p: Prediction) -> dict[str, float] | None:
    if p.scores is None:
        return None
    scores = {
        label_key(k)[: L.MAX_SCORE_LABEL_CHARS]: min(max(v, 0.0), 1.0) for k, v in p.scores.items()
    }
    return scores if len(scores) <= L.MAX_SCORES else None


_UNKNOWN_MODEL: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "Unknown model"}
}
_BAD_BODY: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Body is not JSON"},
    413: {"model": ErrorBody, "description": "Body over DRIFTLOOP_SERVER_MAX_BODY_BYTES"},
    422: {"model": ErrorBody, "description": "Body does not validate, or over a count limit"},
}


def create_app(ctx: ServerContext) -> FastAPI:
    """The FastAPI app for ``ctx``; the follower (if any) runs for the app's lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if ctx.follower is not None:
            ctx.follower.start()
        try:
            yield
        finally:
            if ctx.follower is not None:
                ctx.follower.stop()
            try:
                ctx.publisher.flush(ctx.config.feedback_timeout_s)
            except PublishError as exc:
                log.error("inference logs not acknowledged at shutdown: %s", exc)
            for close in ctx.closers:
                try:
                    close()
                except Exception as exc:  # noqa: BLE001 - shutting down: each closer runs whatever the others did
                    log.warning("closing at shutdown failed: %s", exc)

    app = FastAPI(
        title="driftloop model server",
        version="1",
        lifespan=lifespan,
    )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "request body does not validate", _validation_detail(exc.errors()))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(_Refused)
    async def _refused(request: Request, exc: _Refused) -> JSONResponse:
        return _error(exc.status, exc.message, exc.detail)

    def registry_of(model: str) -> ModelRegistry:
        registry = ctx.registries.get(model)
        if registry is None:
            raise _Refused(404, f"unknown model {model[:200]!r}; served: {sorted(ctx.registries)}")
        return registry

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": ErrorBody, "description": "Not ready"}})
    def readyz() -> JSONResponse:
        """200 when every model has a live version loaded, else 503 naming those that do not."""
        waiting = [m for m, r in ctx.registries.items() if _live(r.serving) is None]
        if waiting:
            return _error(503, f"not ready: no live version loaded for {sorted(waiting)}")
        return JSONResponse({"status": "ready"})

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus"}},
    )
    def metrics() -> Response:
        """Prometheus text format."""
        _refresh_gauges(ctx)
        return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models/{model}", response_model=ModelStatus, responses=_UNKNOWN_MODEL)
    def model_status(model: str) -> ModelStatus:
        """Versions served, the pointer epoch applied, readiness and the last load error."""
        registry = registry_of(model)
        serving = registry.serving
        error = registry.last_error
        follow = ctx.follower.status.get(model) if ctx.follower is not None else None
        return ModelStatus(
            name=model,
            ready=_live(serving) is not None,
            epoch=None if serving is None else serving.epoch,
            applied_ms=None if serving is None else serving.applied_ms,
            live=_version(serving.live) if serving else None,
            canary=_version(serving.canary) if serving else None,
            canary_percent=serving.canary_percent if serving else 0.0,
            shadow=_version(serving.shadow) if serving else None,
            resident=registry.resident_versions(),
            last_error=None
            if error is None
            else LoadError(
                epoch=error.epoch, version=error.version, error=error.error, ts=error.ts
            ),
            pointer_error=None if follow is None else follow.pointer_error,
            pointer_missing=follow is not None and follow.pointer_missing,
            server=ctx.config.server_id,
        )

    @app.post(
        "/v1/models/{model}:predict",
        response_model=PredictResponse,
        responses={
            **_UNKNOWN_MODEL,
            **_BAD_BODY,
            503: {"model": ErrorBody, "description": "No live version loaded yet"},
        },
    )
    async def predict(model: str, body: Annotated[PredictRequest, Body()]) -> PredictResponse:
        """Predict a batch; each instance is served by the live or the canary version."""
        if len(body.instances) <= INLINE_INSTANCES:
            return predict_batch(model, body)
        return await run_in_threadpool(predict_batch, model, body)

    def predict_batch(model: str, body: PredictRequest) -> PredictResponse:
        registry = registry_of(model)
        if len(body.instances) > ctx.config.max_instances:
            raise _Refused(
                422,
                f"{len(body.instances)} instances; at most {ctx.config.max_instances} per call"
                " (DRIFTLOOP_SERVER_MAX_INSTANCES)",
            )
        serving = registry.serving  # read once: the whole batch sees one snapshot
        live = _live(serving)
        if serving is None or live is None:
            raise _Refused(503, f"model {model!r} has no live version loaded yet")
        with ctx.metrics.predict_seconds.labels(model).time():
            return _predict(ctx, serving, live, body.instances)

    @app.post(
        "/v1/feedback",
        status_code=202,
        response_model=FeedbackAccepted,
        responses={
            **_BAD_BODY,
            404: {"model": ErrorBody, "description": "An event names a model not served here"},
            503: {"model": ErrorBody, "description": "Not acknowledged in time: retry"},
        },
    )
    def feedback(
        body: Annotated[FeedbackEvent | list[FeedbackEvent], Body()],
    ) -> FeedbackAccepted:
        """One FeedbackEvent or a list: 202 once acknowledged by the broker or spooled."""
        try:  # the one check every feedback producer shares
            events = validate_feedback(body)
        except SchemaError as exc:
            ctx.metrics.feedback.labels("rejected").inc()
            raise _Refused(422, f"feedback does not validate: {exc}") from None
        if len(events) > ctx.config.max_feedback_events:
            raise _Refused(
                422,
                f"{len(events)} feedback events; at most {ctx.config.max_feedback_events} per"
                " call (DRIFTLOOP_SERVER_MAX_FEEDBACK_EVENTS)",
            )
        unknown = sorted({e.model for e in events} - set(ctx.registries))
        if unknown:
            ctx.metrics.feedback.labels("rejected").inc(len(events))
            raise _Refused(404, f"unknown model(s) {unknown}; served: {sorted(ctx.registries)}")
        try:
            ctx.publisher.publish_acked(list(events), ctx.config.feedback_timeout_s)
        except PublishError as exc:
            ctx.metrics.feedback.labels("unavailable").inc(len(events))
            log.warning("feedback not acknowledged: %s", exc)
            raise _Refused(503, f"feedback not acknowledged, retry later: {exc}") from None
        ctx.metrics.feedback.labels("accepted").inc(len(events))
        return FeedbackAccepted(accepted=len(events))

    app.add_middleware(BodyLimit, max_body_bytes=ctx.config.max_body_bytes)
    return app


def _live(serving: Serving | None) -> Resident | None:
    return None if serving is None else serving.live


def _version(resident: Resident | None) -> str | None:
    return None if resident is None else resident.version


def _predict(
    ctx: ServerContext, serving: Serving, live: Resident, instances: Sequence[Instance]
) -> PredictResponse:
    ids = [i.request_id or uuid.uuid4().hex for i in instances]
    log_ids = _LogIds()
    features: list[Mapping[str, FeatureValue]] = [i.features for i in instances]
    canary = serving.canary
    to_canary = [
        canary is not None and routes_to_canary(rid, serving.canary_percent) for rid in ids
    ]
    served: list[tuple[Resident, Literal["live", "canary"]]] = [
        (canary, "canary") if c and canary is not None else (live, "live") for c in to_canary
    ]
    results: list[Prediction | None] = [None] * len(instances)
    for maybe_resident, which in ((live, "live"), (canary, "canary")):
        if maybe_resident is None:
            continue
        resident = maybe_resident
        idx = [i for i, (_, r) in enumerate(served) if r == which]
        if not idx:
            continue
        for i, done in zip(idx, _run(resident, [features[i] for i in idx], idx), strict=True):
            results[i] = done
    out: list[PredictionOut] = []
    for i, maybe in enumerate(results):
        assert maybe is not None  # noqa: S101 - every index was served above; guards no input
        p = maybe
        resident, route = served[i]
        out.append(
            PredictionOut(
                request_id=ids[i],
                model_version=resident.version,
                route=route,
                prediction=_scalar(p.value),
                scores=_scores(p),
            )
        )
        _log(ctx, serving.model, resident.version, route, ids[i], features[i], p, log_ids)
    if serving.shadow is not None:
        _shadow(ctx, serving.model, serving.shadow, ids, features, log_ids)
    return PredictResponse(
        model=serving.model,
        model_version=live.version if any(r == "live" for _, r in served) else served[0][0].version,
        epoch=serving.epoch,
        predictions=out,
    )


def _run(
    resident: Resident, features: list[Mapping[str, FeatureValue]], idx: list[int]
) -> list[Prediction]:
    """Predict with one version; bad input or a model failure is a 422 naming the instance."""
    try:
        return resident.adapter.predict_many(features)
    except SchemaError as exc:
        where = idx[int(exc.context.get("index", 0))]
        where_field = exc.field or "features"
        raise _Refused(
            422,
            f"instance {where}: {exc.message}",
            [
                {
                    "loc": ["body", "instances", str(where), *where_field.split(".", 1)],
                    "msg": exc.reason,
                }
            ],
        ) from None
    except PredictError as exc:
        where = idx[int(exc.context.get("index", 0))] if len(idx) > 1 else idx[0]
        raise _Refused(422, f"the model could not score instance {where}: {exc.message}") from None


def _shadow(
    ctx: ServerContext,
    model: str,
    shadow: Resident,
    ids: list[str],
    features: list[Mapping[str, FeatureValue]],
    log_ids: _LogIds,
) -> None:
    """Shadow predictions: logged with route=shadow, never returned, never failing the call."""
    try:
        predictions = shadow.adapter.predict_many(features)
    except (SchemaError, PredictError) as exc:
        ctx.metrics.log_failures.labels(model, "shadow_failed").inc(len(ids))
        log.warning("model %s: shadow %s could not predict: %s", model, shadow.version, exc)
        return
    for rid, x, p in zip(ids, features, predictions, strict=True):
        _log(ctx, model, shadow.version, "shadow", rid, x, p, log_ids)


class _LogIds:
    """Event ids for one request's inference logs: one random UUID, then a counter."""

    def __init__(self) -> None:
        self.base = uuid.uuid4().hex
        self.n = 0

    def next(self) -> str:
        self.n += 1
        return f"{self.base}-{self.n}"


_LOG_LIMIT = min(InferenceLog.max_payload_bytes, L.MAX_RECORD_VALUE_BYTES)


def _log_fields(ctx: ServerContext, model: str, version: str, route: str) -> dict[str, Any]:
    """The fields every log of ``(model, version, route)`` shares, validated as an
    InferenceLog once (pydantic's ValidationError when they are not valid)."""
    key = (model, version, route)
    fields = ctx.log_templates.get(key)
    if fields is None:
        if len(ctx.log_templates) >= 256:  # versions come and go: keep the recent ones
            ctx.log_templates.clear()
        fields = InferenceLog.new(
            request_id="-",
            model=model,
            model_version=version,
            features={},
            prediction=0,
            route=route,
            server=ctx.config.server_id,
        ).model_dump()
        ctx.log_templates[key] = fields
    return fields


def _log(
    ctx: ServerContext,
    model: str,
    version: str,
    route: str,
    request_id: str,
    features: Mapping[str, FeatureValue],
    p: Prediction,
    log_ids: _LogIds,
) -> None:
    """Queue the InferenceLog of one prediction; a failure is counted, never raised.

    The log is encoded without building a pydantic model (that was most of its
    cost): its common fields were validated once (:func:`_log_fields`), the
    request id and features by the request body's model (the same strict
    ``EventId`` and ``Features`` types), the prediction is a contract
    :func:`_scalar`, the scores are checked here, and the bytes are what
    :func:`schemas.codec.encode` writes for the same event (tested: they decode
    strictly to it). Scores that do not pass go the validating way.
    """
    ctx.metrics.predictions.labels(model, route, version).inc()
    if not ctx.config.log_inferences:
        return  # DRIFTLOOP_SERVER_LOG_INFERENCES=false
    value = _scalar(p.value)
    if value is None:
        ctx.metrics.log_failures.labels(model, "no_prediction").inc()
        return
    try:
        scores = _scores(p)
        fields = dict(_log_fields(ctx, model, version, route))
        fields |= {
            "event_id": log_ids.next(),
            "ts": time.time_ns() // 1_000_000,
            "request_id": request_id,
            "features": features if isinstance(features, dict) else dict(features),
            "prediction": value,
            "scores": scores,
        }
        if scores is not None and not all(k and 0.0 <= v <= 1.0 for k, v in scores.items()):
            InferenceLog.model_validate(fields)  # raises, naming what is wrong
        raw = orjson.dumps(fields)
        if len(raw) > _LOG_LIMIT:
            raise PublishError(f"InferenceLog encodes to {len(raw)} bytes, over {_LOG_LIMIT}")
        record = Record(ctx.inference_log_topic, request_id.encode(), raw)
        ctx.publisher.publish_record(record, InferenceLog)
    except ValidationError as exc:
        ctx.metrics.log_failures.labels(model, "invalid").inc()
        log.warning("model %s: inference log does not validate: %s", model, exc.errors()[:1])
    except PublishError as exc:
        ctx.metrics.log_failures.labels(model, "publish").inc()
        log.warning("model %s: inference log not queued: %s", model, exc)


def _refresh_gauges(ctx: ServerContext) -> None:
    m = ctx.metrics
    for model, registry in ctx.registries.items():
        serving = registry.serving
        m.applied_epoch.labels(model).set(-1 if serving is None else serving.epoch)
        m.ready.labels(model).set(1 if _live(serving) is not None else 0)
        m.resident.labels(model).set(len(registry.resident_versions()))
        follow = ctx.follower.status.get(model) if ctx.follower is not None else None
        m.pointer_errors.labels(model).set(1 if follow and follow.pointer_error else 0)
