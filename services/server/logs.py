"""Inference logs as the model server writes them: encoded in one pass, no pydantic per log.

Every prediction is logged as an :class:`~schemas.events.InferenceLog`. A
request's logs are built by one :class:`RequestLogs` while its predictions
are made and handed to the publisher in one call
(:meth:`~services.server.app.LogPublisher.publish_records`).

Each log is written by bytes templating, not through a pydantic model (which
was most of a log's cost). A :class:`LogTemplate` holds the encoded fields
every log of one (model, version, route, server) shares, validated once as an
InferenceLog, in the order :func:`schemas.codec.encode` writes them; a log
fills the template's slots with its event id, time, request id, features,
prediction and scores. The slots' values are valid by construction: the
request id and features were validated by the request body's model (the same
strict ``EventId`` and ``Features`` types), the prediction is a contract
scalar (:func:`contract_prediction`) and the scores are checked here
(those that fail are refused, naming what is wrong, never sent). So the bytes
are what ``schemas.codec.encode`` writes for the same event (tested: they are
equal, and decode strictly to it).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
import uuid
from collections.abc import Mapping
from typing import Any

import orjson
from pydantic import ValidationError

from schemas import limits as L
from schemas.events import InferenceLog
from services.learning.adapters import Prediction
from services.learning.hashing import FeatureValue
from services.publish.kafka import Record

log = logging.getLogger(__name__)

#: The fields each log fills in, in the order InferenceLog's encoding has them.
SLOTS = ("event_id", "ts", "request_id", "features", "prediction", "scores")

#: The largest encoded log that can be sent.
LOG_LIMIT = min(InferenceLog.max_payload_bytes, L.MAX_RECORD_VALUE_BYTES)

_dumps = orjson.dumps


class _EventIds:
    """Where a request's event ids start: ``{process}-{request}``, a random 128-bit
    prefix for this process (a new one in a forked child) and a request counter; a
    log adds ``-{n}``. Unique like a UUID per request, without one (``uuid4`` took
    about 3.7 us here, an ``os.urandom`` call each time)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.prefix = uuid.uuid4().hex.encode()
        self.requests = itertools.count(1)

    def next_base(self) -> bytes:
        return b"%b-%d" % (self.prefix, next(self.requests))


_EVENT_IDS = _EventIds()
os.register_at_fork(after_in_child=_EVENT_IDS.reset)


class LogTemplate:
    """The encoded InferenceLog of one (model, version, route, server) with empty slots.

    Raises pydantic's ValidationError when those fields do not make a valid
    InferenceLog, and ValueError if InferenceLog's fields no longer come in the
    order of :data:`SLOTS` (the template could not write them).
    """

    __slots__ = ("_c0", "_c1", "_c2", "_c3", "_c4", "_c5", "_c6")

    def __init__(self, model: str, version: str, route: str | None, server: str | None) -> None:
        fields = InferenceLog.new(
            request_id="-",
            model=model,
            model_version=version,
            features={},
            prediction=0,
            route=route,
            server=server,
        ).model_dump()
        chunks: list[bytes] = []
        slots: list[str] = []
        current = b"{"
        for i, (key, value) in enumerate(fields.items()):
            current += (b"," if i else b"") + _dumps(key) + b":"
            if key in SLOTS:
                chunks.append(current)
                slots.append(key)
                current = b""
            else:
                current += _dumps(value)
        chunks.append(current + b"}")
        if tuple(slots) != SLOTS:
            raise ValueError(f"InferenceLog's fields come as {slots}, the template writes {SLOTS}")
        self._c0, self._c1, self._c2, self._c3, self._c4, self._c5, self._c6 = chunks

    def encode(
        self,
        event_id: bytes,
        ts: bytes,
        request_id: str,
        features: Mapping[str, FeatureValue],
        prediction: bool | int | float | str,
        scores: dict[str, float] | None,
    ) -> bytes:
        """The log's bytes; ``event_id`` is already JSON (a quoted ASCII string), ``ts``
        the decimal digits of the time; the other values are the event's."""
        return b"".join(
            (
                self._c0,
                event_id,
                self._c1,
                ts,
                self._c2,
                _dumps(request_id),
                self._c3,
                _dumps(features if isinstance(features, dict) else dict(features)),
                self._c4,
                _dumps(prediction),
                self._c5,
                _dumps(scores),
                self._c6,
            )
        )


def label_key(label: Any) -> str:
    """How a class label names a score: booleans ``true`` / ``false``, else ``str``."""
    if isinstance(label, bool):
        return "true" if label else "false"
    return str(label)


def contract_prediction(value: Any) -> bool | int | float | str | None:
    """A model's output as the contract's Scalar (None when it cannot be one: a
    non-finite number, an over-long string), for the response and the log."""
    if value is None or isinstance(value, bool | str):
        return value if not isinstance(value, str) or len(value) <= L.MAX_VALUE_CHARS else None
    if isinstance(value, int):
        return value if L.MIN_INT <= value <= L.MAX_INT else float(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)[: L.MAX_VALUE_CHARS]


def contract_scores(p: Prediction) -> dict[str, float] | None:
    """A prediction's scores by :func:`label_key`, clamped to [0, 1] (None when there
    are none, or too many); a NaN stays NaN (:func:`valid_scores` refuses it)."""
    if p.scores is None:
        return None
    scores = {
        label_key(k)[: L.MAX_SCORE_LABEL_CHARS]: min(max(v, 0.0), 1.0) for k, v in p.scores.items()
    }
    return scores if len(scores) <= L.MAX_SCORES else None


#: (model, version, route, server) -> its template (see :func:`template_for`).
Templates = dict[tuple[str, str, str, str | None], LogTemplate]


def template_for(
    templates: Templates, model: str, version: str, route: str, server: str | None
) -> LogTemplate:
    """The cached template of ``(model, version, route, server)``, made on first use."""
    key = (model, version, route, server)
    template = templates.get(key)
    if template is None:
        if len(templates) >= 256:  # versions come and go: keep the recent ones
            templates.clear()
        template = templates[key] = LogTemplate(model, version, route, server)
    return template


def valid_scores(scores: dict[str, float]) -> bool:
    """Whether ``scores`` fit InferenceLog.scores: at most ``MAX_SCORES`` labels, none
    empty or too long, every value in [0, 1] (so not NaN)."""
    if len(scores) > L.MAX_SCORES or "" in scores:
        return False
    for label, value in scores.items():
        if not 0.0 <= value <= 1.0 or len(label) > L.MAX_SCORE_LABEL_CHARS:
            return False
    return True


class RequestLogs:
    """One request's inference logs, encoded as its predictions are made.

    Event ids are ``{process}-{request}-{n}``: a random prefix per server
    process, a request counter, a log counter (:class:`_EventIds`); every log
    of the request has the same ``ts`` (when the request's predictions were
    made). A log that cannot be made is not raised: its reason is counted in
    :attr:`failures` (``no_prediction``; ``invalid``; ``publish``: over the
    size limit, it could never be sent) and :meth:`report` logs it once per
    request.
    """

    def __init__(self, templates: Templates, model: str, server: str | None, topic: str) -> None:
        self._templates = templates
        self.model = model
        self._server = server
        self._topic = topic
        self._base = _EVENT_IDS.next_base()
        self._n = 0
        self._ts = b"%d" % (time.time_ns() // 1_000_000)
        #: The encoded logs, in prediction order.
        self.records: list[Record] = []
        #: Reason -> logs that could not be made.
        self.failures: dict[str, int] = {}
        self._first_error: dict[str, str] = {}

    def add(
        self,
        version: str,
        route: str,
        request_id: str,
        features: Mapping[str, FeatureValue],
        prediction: bool | int | float | str | None,
        scores: dict[str, float] | None,
    ) -> None:
        """Encode the log of one prediction (``prediction`` a contract scalar, or None
        when the model could not tell: nothing to log)."""
        if prediction is None:
            self._fail("no_prediction", "the model made no prediction")
            return
        try:
            template = template_for(self._templates, self.model, version, route, self._server)
        except (ValidationError, ValueError) as exc:
            self._fail("invalid", str(exc))
            return
        if scores is not None and not valid_scores(scores):
            self._fail("invalid", _scores_error(scores))
            return
        self._n += 1
        raw = template.encode(
            b'"%b-%d"' % (self._base, self._n), self._ts, request_id, features, prediction, scores
        )
        if len(raw) > LOG_LIMIT:
            self._fail("publish", f"InferenceLog encodes to {len(raw)} bytes, over {LOG_LIMIT}")
            return
        self.records.append(Record(self._topic, request_id.encode(), raw))

    def _fail(self, reason: str, message: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1
        self._first_error.setdefault(reason, message)

    def report(self) -> None:
        """Log what could not be made, once per reason."""
        for reason, count in self.failures.items():
            if reason != "no_prediction":
                log.warning(
                    "model %s: %d inference log(s) not made (%s): %s",
                    self.model,
                    count,
                    reason,
                    self._first_error[reason][:500],
                )


def _scores_error(scores: dict[str, float]) -> str:
    """What is wrong with ``scores`` as InferenceLog.scores (the validating way)."""
    try:
        InferenceLog.new(
            request_id="-", model="m", model_version="v", features={}, prediction=0, scores=scores
        )
    except ValidationError as exc:
        return str(exc.errors(include_url=False)[:1])
    return "scores do not validate"
