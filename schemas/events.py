"""The eight event types that travel on driftloop's topics (ARCHITECTURE.md, "Topics").

Each model is frozen, strict and closed:

- strict: no coercion; ``"1"`` is not an int, ``1`` is not a bool, ``1.0`` is
  not an int (an int is accepted where a float is expected);
- finite: NaN and infinities are rejected wherever a number is expected;
- closed: an unknown field is an error, so a typo never passes silently;
- bounded: every string, map and number has a limit from :mod:`schemas.limits`.

Every event carries ``schema_version`` (only versions in
:data:`~schemas.limits.KNOWN_SCHEMA_VERSIONS`), ``event_id`` (unique per
event) and ``ts`` (epoch milliseconds). :meth:`Event.new` fills those three
for producers; :mod:`schemas.codec` turns events into bytes and back.

Model and version names match :data:`~schemas.limits.NAME_PATTERN`, so they
are safe as a directory name and inside a Redis key.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from typing import Annotated, Any, ClassVar, Literal, Self, TypeAlias

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from schemas import limits as L

Route: TypeAlias = Literal["live", "canary", "shadow"]
"""Which pointer slot served an inference."""
FeedbackKind: TypeAlias = Literal["explicit", "implicit"]
"""Explicit feedback (a human or system verdict) or implicit (a click, a dwell time)."""
CheckpointTrigger: TypeAlias = Literal[
    "count", "drift", "interval", "metric", "shutdown", "manual", "config_change", "initial"
]
"""Why a checkpoint was taken."""
VersionAction: TypeAlias = Literal[
    "promote", "rollback", "canary", "shadow", "clear_canary", "clear_shadow"
]
"""A change of the Redis version pointer."""
Judge: TypeAlias = Literal["gateway", "guard"]
"""Who judged a version: the validation gateway (candidates) or the guard (the live version)."""
Decision: TypeAlias = Literal[
    "promote", "reject", "hold", "canary", "superseded", "rollback", "keep", "shadow"
]
"""What a verdict decided (see :class:`Verdict`)."""

#: Dead-letter kinds driftloop itself emits; ``DeadLetter.error_kind`` accepts
#: any short snake_case word so agents can add their own.
KNOWN_ERROR_KINDS: frozenset[str] = frozenset(
    {"decode", "validation", "too_large", "late", "duplicate", "orphan", "processing"}
)

SchemaVersion = Annotated[
    int,
    Field(
        ge=min(L.KNOWN_SCHEMA_VERSIONS),
        le=max(L.KNOWN_SCHEMA_VERSIONS),
        json_schema_extra={"enum": sorted(L.KNOWN_SCHEMA_VERSIONS)},
    ),
]
EventId = Annotated[str, StringConstraints(min_length=1, max_length=L.MAX_ID_CHARS)]
Name = Annotated[
    str, StringConstraints(min_length=1, max_length=L.MAX_NAME_CHARS, pattern=L.NAME_PATTERN)
]
Text = Annotated[str, StringConstraints(max_length=L.MAX_TEXT_CHARS)]
TimestampMs = Annotated[int, Field(ge=0, le=L.MAX_TS_MS)]
Count = Annotated[int, Field(ge=0, le=L.MAX_INT)]
Int64 = Annotated[int, Field(ge=L.MIN_INT, le=L.MAX_INT)]
ValueStr = Annotated[str, StringConstraints(max_length=L.MAX_VALUE_CHARS)]
Scalar: TypeAlias = bool | Int64 | float | ValueStr
"""A feature value, prediction or label: finite number, bounded string or boolean.

An integer outside signed 64 bits is kept as the nearest float, as most JSON
readers would.
"""
FeatureKey = Annotated[str, StringConstraints(min_length=1, max_length=L.MAX_FEATURE_KEY_CHARS)]
Features = Annotated[dict[FeatureKey, Scalar], Field(max_length=L.MAX_FEATURES)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
ScoreLabel = Annotated[str, StringConstraints(min_length=1, max_length=L.MAX_SCORE_LABEL_CHARS)]
MetricName = Annotated[str, StringConstraints(min_length=1, max_length=L.MAX_METRIC_NAME_CHARS)]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Base64 = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"

_CONFIG = ConfigDict(
    strict=True,
    frozen=True,
    extra="forbid",
    allow_inf_nan=False,
    use_attribute_docstrings=True,
    validate_default=False,
)


class Event(BaseModel):
    """Fields common to every event, and the strict, frozen, closed configuration.

    ``topic`` names the contract topic key (as in ``services.config.TOPIC_NAMES``)
    the event travels on; ``max_payload_bytes`` is the largest encoded size
    :func:`schemas.codec.decode` accepts for the type.
    """

    model_config = _CONFIG

    topic: ClassVar[str] = ""
    max_payload_bytes: ClassVar[int] = L.MAX_EVENT_BYTES

    schema_version: SchemaVersion
    """Version of this event's schema; only versions this build knows are accepted."""
    event_id: EventId
    """Unique per event (a UUID is a good choice); consumers use it to drop duplicates."""
    ts: TimestampMs
    """When the event was produced, epoch milliseconds."""

    @classmethod
    def new(cls, **fields: Any) -> Self:
        """Validate ``fields`` into a new event, filling the common fields when absent.

        ``schema_version`` defaults to the current version, ``event_id`` to a
        random UUID (hex) and ``ts`` to now. Raises pydantic's
        ``ValidationError`` on invalid fields, like the constructor.
        """
        fields.setdefault("schema_version", L.CURRENT_SCHEMA_VERSION)
        fields.setdefault("event_id", uuid.uuid4().hex)
        fields.setdefault("ts", time.time_ns() // 1_000_000)
        return cls.model_validate(fields)


class InferenceLog(Event):
    """One prediction a model server made, with the version that made it.

    Keyed by ``request_id`` on the ``inference-logs`` topic.
    """

    topic: ClassVar[str] = "inference_logs"

    request_id: EventId
    """The request this prediction answered; feedback refers to it."""
    model: Name
    """Model name."""
    model_version: Name
    """The checkpoint version that served the request."""
    features: Features
    """The model's input: feature name -> number, string or boolean."""
    prediction: Scalar
    """The model's output."""
    scores: Annotated[dict[ScoreLabel, Probability], Field(max_length=L.MAX_SCORES)] | None = None
    """Class label -> probability in [0, 1], for classifiers."""
    route: Route | None = None
    """Which pointer slot served the request: live, canary or shadow."""
    server: EventId | None = None
    """The server instance that answered (host name, pod name)."""


class FeedbackEvent(Event):
    """The true outcome for an earlier request, from a feedback producer.

    Keyed by ``request_id`` on the ``feedback`` topic. May arrive before its
    inference log, late, or twice.
    """

    topic: ClassVar[str] = "feedback"

    request_id: EventId
    """The request this feedback is about."""
    model: Name
    """Model name."""
    label: Scalar
    """The true outcome."""
    kind: FeedbackKind = "explicit"
    """Explicit feedback (a verdict) or implicit (a click, a dwell time)."""
    weight: Annotated[float, Field(ge=0.0)] = 1.0
    """Importance of this example in training; 0 keeps it out of the update."""


def training_example_id(request_id: str, feedback_event_id: str | None) -> str:
    """The deterministic ``example_id`` of the example joining a request and its feedback.

    The same pair always gives the same id, so a replayed or duplicated join
    produces the same example and consumers can drop it. ``None`` stands for
    the default-label example of a request that got no feedback in time.
    """
    # Length-prefixed so that no two different pairs share an input.
    fid = "" if feedback_event_id is None else feedback_event_id
    marker = "-" if feedback_event_id is None else "+"
    material = f"{len(request_id)}:{request_id}{marker}{len(fid)}:{fid}"
    return hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class TrainingExample(Event):
    """An inference joined with its feedback (or a default label): one training example.

    Emitted by the attribution joiner, keyed by ``model`` on the
    ``training-examples`` topic. Two rules are checked: ``example_id`` equals
    :func:`training_example_id` of ``request_id`` and ``feedback_event_id``;
    a default-label example has no feedback fields and any other has both.

    ``ts`` (epoch ms, as on every event) is the event time at which the
    example was decided, derived from the joined events alone, never from
    when they were read: ``max(inference_ts, feedback_ts)`` for an example
    emitted at the match (``feedback_policy="first"``), and the end of the
    request's window, ``inference_ts + window + grace``, for one emitted when
    the window closed (``last``, ``sum``, and default labels). So the same
    events give byte-identical examples in every run and replay.
    """

    topic: ClassVar[str] = "training_examples"

    example_id: EventId
    """``training_example_id(request_id, feedback_event_id)``."""
    request_id: EventId
    """The request that was joined."""
    model: Name
    """Model name."""
    model_version: Name
    """The version that served the request (the attribution)."""
    features: Features
    """The features the model saw when it served the request."""
    label: Scalar
    """The feedback's label, or the default label."""
    weight: Annotated[float, Field(ge=0.0)] = 1.0
    """Importance of this example in training."""
    label_is_default: bool = False
    """True when no feedback came in the join window and the default label was used."""
    inference_event_id: EventId
    """event_id of the InferenceLog."""
    feedback_event_id: EventId | None = None
    """event_id of the FeedbackEvent; absent for a default label."""
    inference_ts: TimestampMs
    """ts of the InferenceLog."""
    feedback_ts: TimestampMs | None = None
    """ts of the FeedbackEvent; absent for a default label."""
    join_latency_ms: Count
    """Event-time feedback delay in ms: ``feedback_ts - inference_ts``, clamped at 0;
    for a default label, ``ts - inference_ts`` (``window + grace``). Derived
    from the events only, so a replayed example is byte-identical."""
    route: Route | None = None
    """The route of the inference log that made the example (``live`` or
    ``canary``; a shadow log never makes one); absent when the log had none."""
    prediction: Scalar | None = None
    """The prediction the serving version answered with (from the inference log),
    so every version is scored on live feedback; absent in examples from before."""
    scores: Annotated[dict[ScoreLabel, Probability], Field(max_length=L.MAX_SCORES)] | None = None
    """The inference log's class probabilities, when it had them."""

    @model_validator(mode="after")
    def _check_attribution(self) -> Self:
        has_feedback = self.feedback_event_id is not None
        if has_feedback != (self.feedback_ts is not None):
            raise ValueError(
                "feedback_event_id and feedback_ts must be both present or both absent"
            )
        if self.label_is_default == has_feedback:
            raise ValueError(
                "label_is_default must be true exactly when there is no feedback_event_id"
            )
        expected = training_example_id(self.request_id, self.feedback_event_id)
        if self.example_id != expected:
            raise ValueError(
                f"example_id must be training_example_id(request_id, feedback_event_id) "
                f"= {expected!r}"
            )
        return self


def shadow_score_id(request_id: str, shadow_event_id: str) -> str:
    """The deterministic ``event_id`` of the :class:`ShadowScore` of a request's shadow log.

    One shadow log of a request is scored at most once, so the pair names the
    score: a replayed join emits the same id and consumers drop the repeat.
    """
    material = f"shadow:{len(request_id)}:{request_id}+{len(shadow_event_id)}:{shadow_event_id}"
    return hashlib.sha256(material.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class ShadowScore(Event):
    """A shadow prediction paired with the live answer and the label of the same request.

    Emitted by the attribution joiner, keyed by ``model`` on the
    ``shadow-scores`` topic, when the window of a request that had a shadow
    log (``route="shadow"``) and an example with a real label closes. It
    carries what the shadow version answered, what the live (or canary)
    version answered for the same request, and the label of the request's
    training example, so both versions are scored on the same requests.
    A request whose example has the default label gets none (a default is
    not feedback). ``event_id`` is :func:`shadow_score_id` of ``request_id``
    and ``shadow_event_id``; ``ts`` is the end of the request's window
    (``live_ts + window + grace``), from the events alone: the same events
    give byte-identical scores in every run and replay.
    """

    topic: ClassVar[str] = "shadow_scores"

    request_id: EventId
    """The request both versions answered."""
    example_id: EventId
    """The ``example_id`` of the request's training example (the label's source)."""
    model: Name
    """Model name."""
    model_version: Name
    """The shadow version (the shadow log's ``model_version``)."""
    shadow_event_id: EventId
    """event_id of the shadow InferenceLog."""
    prediction: Scalar
    """The shadow version's prediction (never returned to the caller)."""
    scores: Annotated[dict[ScoreLabel, Probability], Field(max_length=L.MAX_SCORES)] | None = None
    """The shadow version's class probabilities, when it had them."""
    label: Scalar
    """The label of the request's training example (feedback, never a default)."""
    live_version: Name
    """The version that served the request (the example's ``model_version``)."""
    live_route: Route | None = None
    """The route of the serving log (``live`` or ``canary``); absent when it had none."""
    live_event_id: EventId
    """event_id of the serving InferenceLog (the example's ``inference_event_id``)."""
    live_ts: TimestampMs
    """ts of the serving InferenceLog."""
    live_prediction: Scalar
    """What the serving version answered."""
    live_scores: Annotated[dict[ScoreLabel, Probability], Field(max_length=L.MAX_SCORES)] | None = (
        None
    )
    """The serving version's class probabilities, when it had them."""

    @model_validator(mode="after")
    def _check_id(self) -> Self:
        expected = shadow_score_id(self.request_id, self.shadow_event_id)
        if self.event_id != expected:
            raise ValueError(
                f"event_id must be shadow_score_id(request_id, shadow_event_id) = {expected!r}"
            )
        if self.live_route == "shadow":
            raise ValueError("live_route is the serving log's route: live, canary or absent")
        return self


class CheckpointEvent(Event):
    """A checkpoint was committed (its manifest is written). Keyed by ``model``."""

    topic: ClassVar[str] = "checkpoint_events"

    model: Name
    """Model name."""
    version: Name
    """The new checkpoint's version."""
    parent_version: Name | None = None
    """The version it was trained from; absent for the first checkpoint."""
    step: Count
    """Optimizer steps (online updates) taken up to this checkpoint."""
    examples_seen: Count
    """Training examples consumed up to this checkpoint."""
    trigger: CheckpointTrigger
    """Why the checkpoint was taken."""
    metrics: Annotated[dict[MetricName, float], Field(max_length=L.MAX_METRICS)] = Field(
        default_factory=dict
    )
    """Metric name -> finite value at checkpoint time."""
    location: Annotated[str, StringConstraints(min_length=1, max_length=L.MAX_TEXT_CHARS)]
    """Where the checkpoint lives: a path or a URI such as ``s3://bucket/model/version``."""
    manifest_sha256: Sha256Hex
    """sha256 (lowercase hex) of the checkpoint's ``manifest.json``."""


def _list_as_tuple(value: object) -> object:
    """A JSON array parsed on its own (a list) is the tuple a strict field expects."""
    return tuple(value) if isinstance(value, list) else value


class VersionEvent(Event):
    """A change of a model's Redis version pointer; the topic is its durable log.

    The version fields, ``history`` and ``epoch`` describe the pointer *after*
    the change, so the pointer can be rebuilt from the last event of each
    model alone; the ``from_*`` fields say what the slots held before.
    ``event_id`` is ``{model}:{epoch}`` for events the pointer records, which
    makes copies of one change recognisable (see :mod:`services.pointer.relay`).
    """

    topic: ClassVar[str] = "version_events"

    model: Name
    """Model name."""
    action: VersionAction
    """What changed."""
    live: Name | None = None
    """Version serving live traffic after the change."""
    previous: Name | None = None
    """Version a rollback would return to."""
    canary: Name | None = None
    """Version serving the canary share, if any."""
    canary_percent: Annotated[float, Field(ge=0.0, le=100.0)] = 0.0
    """Share of traffic, in percent, routed to the canary."""
    shadow: Name | None = None
    """Version receiving shadow traffic (predictions logged, not returned), if any."""
    epoch: Count
    """The pointer's epoch after the change (+1 on every change)."""
    actor: EventId
    """Who made the change (a user, ``cli``, ``trainer``)."""
    reason: Text = ""
    """Why, in words."""
    history: Annotated[
        tuple[Name, ...],
        Field(max_length=L.MAX_ROLLBACK_HISTORY),
        BeforeValidator(_list_as_tuple),
    ] = ()
    """The rollback history after the change: earlier live versions, newest first."""
    from_live: Name | None = None
    """Version that served live traffic before the change."""
    from_canary: Name | None = None
    """Canary version before the change."""
    from_shadow: Name | None = None
    """Shadow version before the change."""


class Verdict(Event):
    """A judgement of one version, with the figures that decided it. Keyed by ``model``.

    The validation gateway judges each candidate checkpoint against the live
    version on the same held-out examples; the guard judges the live version
    against the one it replaced, on the same examples. ``decision``:

    - ``promote``: the candidate passed and the gateway made it live
      (``epoch`` is the pointer's epoch after that);
    - ``hold``: it passed, but the policy is ``manual`` (recorded only; an
      operator promotes);
    - ``canary``: it passed and the policy is ``canary``: the gateway set it
      as the model's canary (``epoch`` after that); a ``promote`` or
      ``reject`` verdict follows on its canary-route examples (``n`` = their
      number, ``baseline`` = live on its live-route examples of the period);
    - ``reject``: a check failed or it scored worse than allowed;
    - ``superseded``: a newer candidate of the model arrived before this one
      could be judged (newest wins);
    - ``rollback``: the guard found the live version regressed and rolled it back;
    - ``keep``: the guard judged the live version and kept it.

    ``candidate`` and ``baseline`` are the values of ``metric`` for
    ``version`` and ``baseline_version`` on the same ``n`` examples;
    ``difference`` is ``candidate - baseline`` in the metric's better
    direction (positive: ``version`` is better), so a tolerance reads the same
    for accuracy and for log loss.
    """

    topic: ClassVar[str] = "verdicts"

    model: Name
    """Model name."""
    version: Name
    """The version judged."""
    baseline_version: Name | None = None
    """What it was compared with (the live version, or the one the live version replaced)."""
    judge: Judge
    """Who judged."""
    policy: Literal["manual", "auto", "canary", "guard"]
    """The policy in force: the gateway's ``manual``, ``auto`` or ``canary``, or the guard."""
    decision: Decision
    """What was decided (see the class docstring)."""
    reason: Text = ""
    """Why, in words, with the figures."""
    checks: Annotated[dict[MetricName, bool], Field(max_length=L.MAX_METRICS)] = Field(
        default_factory=dict
    )
    """Sanity checks and whether each passed (``verified``, ``finite_weights``,
    ``finite_predictions``, ...)."""
    metric: MetricName | None = None
    """The metric compared."""
    candidate: float | None = None
    """``metric`` of ``version`` on the examples."""
    baseline: float | None = None
    """``metric`` of ``baseline_version`` on the same examples."""
    difference: float | None = None
    """``candidate - baseline`` in the better direction (positive: ``version`` is better)."""
    n: Count = 0
    """How many examples both were scored on."""
    allowance: float | None = None
    """The gateway's tolerance or the guard's threshold that ``difference`` was held to."""
    min_examples: Count = 0
    """The smallest ``n`` the policy decides on."""
    p_value: Probability | None = None
    """The guard's sign test: the chance of live scoring worse on at least as
    many of the requests where the two differ if neither were better (None:
    not tested)."""
    epoch: Count | None = None
    """The pointer's epoch after the change this verdict made, if it made one."""


class DeadLetter(Event):
    """A message an agent could not process, kept raw with the reason.

    Keyed by the source topic on the ``dead-letters`` topic. Build one with
    :meth:`capture`, which base64-encodes and truncates the raw bytes.
    """

    topic: ClassVar[str] = "dead_letters"
    max_payload_bytes: ClassVar[int] = L.MAX_DEAD_LETTER_BYTES

    source_topic: Annotated[
        str, StringConstraints(min_length=1, max_length=L.MAX_TOPIC_CHARS, pattern=L.TOPIC_PATTERN)
    ]
    """Topic the message was read from."""
    source_partition: Annotated[int, Field(ge=0, le=2**31 - 1)]
    """Its partition."""
    source_offset: Count
    """Its offset."""
    key_b64: (
        Annotated[
            str,
            StringConstraints(
                max_length=L.base64_chars(L.MAX_DEAD_LETTER_KEY_BYTES), pattern=Base64
            ),
        ]
        | None
    ) = None
    """The message key, base64; absent when the message had none."""
    value_b64: Annotated[
        str,
        StringConstraints(max_length=L.base64_chars(L.MAX_DEAD_LETTER_RAW_BYTES), pattern=Base64),
    ]
    """The message value, base64 (standard alphabet, padded)."""
    truncated: bool = False
    """True when the key or value was longer than the limits and only its start is kept."""
    value_size: Count | None = None
    """Length in bytes of the message value as it arrived (``value_b64`` may hold
    only its start); absent in dead letters written before this field existed."""
    value_sha256: Sha256Hex | None = None
    """sha256 (hex) of the whole message value as it arrived, truncated or not."""
    error: Annotated[str, StringConstraints(min_length=1, max_length=L.MAX_TEXT_CHARS)]
    """Why the message was rejected, for a human."""
    error_kind: Annotated[str, StringConstraints(pattern=L.ERROR_KIND_PATTERN)]
    """Machine-readable kind, e.g. decode, validation, late, duplicate."""
    field: Annotated[str, StringConstraints(max_length=L.MAX_FIELD_PATH_CHARS)] | None = None
    """Dotted path of the offending field, when one is known."""

    @classmethod
    def capture(
        cls,
        *,
        source_topic: str,
        source_partition: int,
        source_offset: int,
        value: bytes,
        key: bytes | None,
        error: str,
        error_kind: str,
        field: str | None = None,
        value_size: int | None = None,
        value_sha256: str | None = None,
        **common: Any,
    ) -> Self:
        """A dead letter for a raw Kafka message, cutting anything over the limits.

        ``value`` and ``key`` are kept up to :data:`~schemas.limits.MAX_DEAD_LETTER_RAW_BYTES`
        and :data:`~schemas.limits.MAX_DEAD_LETTER_KEY_BYTES` (``truncated`` says
        when they were cut), so the dead letter always encodes to at most
        :data:`~schemas.limits.MAX_DEAD_LETTER_BYTES` and fits its topic;
        ``value_size`` and ``value_sha256`` describe the whole value. When
        ``value`` is itself only the start of the message value (cut earlier),
        pass the original's ``value_size`` and ``value_sha256``. ``error`` and
        ``field`` are shortened to their limits and made valid UTF-8.
        ``common`` may set ``event_id`` / ``ts``.
        """
        size = len(value) if value_size is None else value_size
        digest = hashlib.sha256(value).hexdigest() if value_sha256 is None else value_sha256
        kept = value[: L.MAX_DEAD_LETTER_RAW_BYTES]
        truncated = (
            len(kept) < size
            or len(value) > L.MAX_DEAD_LETTER_RAW_BYTES
            or (key is not None and len(key) > L.MAX_DEAD_LETTER_KEY_BYTES)
        )
        key_b64 = None
        if key is not None:
            key_b64 = base64.b64encode(key[: L.MAX_DEAD_LETTER_KEY_BYTES]).decode("ascii")
        return cls.new(
            source_topic=source_topic,
            source_partition=source_partition,
            source_offset=source_offset,
            key_b64=key_b64,
            value_b64=base64.b64encode(kept).decode("ascii"),
            truncated=truncated,
            value_size=size,
            value_sha256=digest,
            error=_clean_text(error, L.MAX_TEXT_CHARS) or "unknown error",
            error_kind=error_kind,
            field=None if field is None else _clean_text(field, L.MAX_FIELD_PATH_CHARS),
            **common,
        )

    def raw_value(self) -> bytes:
        """The captured message value (its first bytes when ``truncated``)."""
        return base64.b64decode(self.value_b64, validate=True)

    def raw_key(self) -> bytes | None:
        """The captured message key, or None when the message had none."""
        return None if self.key_b64 is None else base64.b64decode(self.key_b64, validate=True)


def _clean_text(text: str, limit: int) -> str:
    """``text`` as valid UTF-8 (lone surrogates replaced), cut to ``limit`` characters."""
    cleaned = text.encode("utf-8", "replace").decode("utf-8")
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


#: Contract topic key -> the event type its values hold.
EVENT_TYPES: dict[str, type[Event]] = {
    t.topic: t
    for t in (
        InferenceLog,
        FeedbackEvent,
        TrainingExample,
        CheckpointEvent,
        VersionEvent,
        DeadLetter,
        Verdict,
        ShadowScore,
    )
}
