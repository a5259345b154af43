"""Request and response bodies of the model server's HTTP API (KServe v1 style).

Field types reuse the event schemas' bounded, finite types
(:mod:`schemas.events`): a feature map here is exactly what an InferenceLog
may carry, so every accepted request can be logged.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.events import EventId, Features, Name, Scalar

_STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)


class Instance(BaseModel):
    """One input: its features and, optionally, the caller's request id."""

    model_config = _STRICT

    request_id: EventId | None = None
    """Id for the request (feedback refers to it); generated and returned when absent."""
    features: Features
    """Feature name -> finite number, string or boolean."""


class PredictRequest(BaseModel):
    """A batch of instances (at most ``DRIFTLOOP_SERVER_MAX_INSTANCES``, default 1000)."""

    model_config = _STRICT

    instances: list[Instance] = Field(min_length=1)


class PredictionOut(BaseModel):
    """One prediction, with the version and route that served it."""

    request_id: str
    model_version: str
    route: Literal["live", "canary"]
    prediction: Scalar | None
    """None when the model cannot tell (a classifier with no class yet, a non-finite output)."""
    scores: dict[str, float] | None = None
    """Class -> probability (classifiers); booleans are named ``true`` / ``false``."""


class PredictResponse(BaseModel):
    """The predictions, in the order of the instances."""

    model: str
    model_version: str
    """The version that served the batch; the live one when part of it went to the canary
    (each prediction names its own)."""
    epoch: int
    """The pointer epoch the serving versions come from."""
    predictions: list[PredictionOut]


class LoadError(BaseModel):
    epoch: int
    version: str
    error: str
    ts: int


class ModelStatus(BaseModel):
    """What this server serves for one model."""

    name: Name
    ready: bool
    epoch: int | None
    """The pointer epoch this server has applied (None: none yet)."""
    applied_ms: int | None = None
    """When that epoch was applied here, epoch milliseconds (this server's clock)."""
    live: str | None
    canary: str | None
    canary_percent: float
    shadow: str | None
    resident: list[str]
    """Versions kept loaded (a rollback to one of them is a switch)."""
    last_error: LoadError | None
    """The last pointer change that could not be applied, until a later one is."""
    pointer_error: str | None
    """Why the pointer could not be read at the last check (None: it could)."""
    pointer_missing: bool = False
    """Redis answered without a pointer at the last check (flushed or restarted empty:
    the applied versions keep serving until ``driftloop pointer restore``)."""
    server: str


class FeedbackAccepted(BaseModel):
    accepted: int
    """Events acknowledged by the broker or fsynced to the spool."""


class ErrorBody(BaseModel):
    """Every 4xx/5xx body: what is wrong, and where."""

    error: str
    detail: list[dict[str, object]] | None = None
