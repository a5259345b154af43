"""The model server's HTTP API (KServe v1 style), as a FastAPI app factory.

Routes (see ARCHITECTURE.md, "Model server HTTP"):

- ``GET /v1/models/{model}``: the versions served, the pointer epoch applied,
  readiness, resident versions and the last load error;
- ``POST /v1/models/{model}:predict``: predictions for a batch of instances.
  Each request id (generated when absent) picks live or canary by
  :func:`~services.server.routing.routes_to_canary`; the shadow version, when
  set, predicts every instance too, and its predictions are logged with
  ``route=shadow`` and never returned. Every prediction is logged as an
  :class:`~schemas.events.InferenceLog` naming version, route and server
  (encoded in one pass, :mod:`services.server.logs`); a request's logs go to the
  injected publisher in one ``publish_records`` call, which only queues (a
  bounded, batching producer sends them); a log that cannot be made or queued
  is counted, the answer stands;
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
import functools
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol

from fastapi import Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

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
from services.server.logs import RequestLogs, Templates, contract_prediction, contract_scores
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


class LogPublisher(DurablePublisher, Protocol):
    """The server's publisher: also takes inference logs already encoded, a request's
    at once (the :class:`~services.publish.spooled.SpooledPublisher`, the in-memory
    one in tests). ``publish_records`` only queues; it raises PublishError when it
    cannot (closed), and drops, counted, what a full spool has no room for."""

    topics: TopicsConfig

    def publish_records(
        self, records: Sequence[Record], kind: type[Event] | None = None
    ) -> None: ...


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
    #: The encoded common fields of inference logs (:func:`services.server.logs.template_for`).
    log_templates: Templates = field(default_factory=dict)

    @functools.cached_property
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
    logs = _request_logs(ctx, serving.model)
    out: list[PredictionOut] = []
    for i, maybe in enumerate(results):
        assert maybe is not None  # noqa: S101 - every index was served above; guards no input
        p = maybe
        resident, route = served[i]
        value, scores = contract_prediction(p.value), contract_scores(p)
        out.append(
            PredictionOut(
                request_id=ids[i],
                model_version=resident.version,
                route=route,
                prediction=value,
                scores=scores,
            )
        )
        if logs is not None:
            logs.add(resident.version, route, ids[i], features[i], value, scores)
    canaries = sum(to_canary) if canary is not None else 0
    _count(ctx, serving.model, "live", live.version, len(instances) - canaries)
    if canary is not None:
        _count(ctx, serving.model, "canary", canary.version, canaries)
    if serving.shadow is not None:
        _shadow(ctx, serving.model, serving.shadow, ids, features, logs)
    if logs is not None:
        _publish(ctx, logs)
    return PredictResponse(
        model=serving.model,
        model_version=live.version if any(r == "live" for _, r in served) else served[0][0].version,
        epoch=serving.epoch,
        predictions=out,
    )


def _count(ctx: ServerContext, model: str, route: str, version: str, n: int) -> None:
    """Count ``n`` predictions of ``version`` on ``route`` (once per request, not per log)."""
    if n:
        ctx.metrics.predictions.labels(model, route, version).inc(n)


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
    logs: RequestLogs | None,
) -> None:
    """Shadow predictions: logged with route=shadow, never returned, never failing the call."""
    try:
        predictions = shadow.adapter.predict_many(features)
    except (SchemaError, PredictError) as exc:
        ctx.metrics.log_failures.labels(model, "shadow_failed").inc(len(ids))
        log.warning("model %s: shadow %s could not predict: %s", model, shadow.version, exc)
        return
    _count(ctx, model, "shadow", shadow.version, len(predictions))
    if logs is None:
        return
    for rid, x, p in zip(ids, features, predictions, strict=True):
        logs.add(shadow.version, "shadow", rid, x, contract_prediction(p.value), contract_scores(p))


def _request_logs(ctx: ServerContext, model: str) -> RequestLogs | None:
    """A request's inference logs, or None with ``DRIFTLOOP_SERVER_LOG_INFERENCES=false``."""
    if not ctx.config.log_inferences:
        return None
    return RequestLogs(ctx.log_templates, model, ctx.config.server_id, ctx.inference_log_topic)


def _publish(ctx: ServerContext, logs: RequestLogs) -> None:
    """Queue a request's logs in one call; what could not be made or queued is counted."""
    if logs.records:
        try:
            ctx.publisher.publish_records(logs.records, InferenceLog)
        except PublishError as exc:
            lost = len(logs.records)
            ctx.metrics.log_failures.labels(logs.model, "publish").inc(lost)
            log.warning("model %s: %d inference logs not queued: %s", logs.model, lost, exc)
    if logs.failures:
        for reason, count in logs.failures.items():
            ctx.metrics.log_failures.labels(logs.model, reason).inc(count)
        logs.report()


def _refresh_gauges(ctx: ServerContext) -> None:
    m = ctx.metrics
    for model, registry in ctx.registries.items():
        serving = registry.serving
        m.applied_epoch.labels(model).set(-1 if serving is None else serving.epoch)
        m.ready.labels(model).set(1 if _live(serving) is not None else 0)
        m.resident.labels(model).set(len(registry.resident_versions()))
        follow = ctx.follower.status.get(model) if ctx.follower is not None else None
        m.pointer_errors.labels(model).set(1 if follow and follow.pointer_error else 0)
