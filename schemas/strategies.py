"""Hypothesis strategies that generate valid driftloop events, for tests.

Derived from :mod:`schemas.limits`, so a limit changed there changes what is
generated. Strings draw from all of Unicode (control characters, astral
planes, right-to-left text) except lone surrogates, which no UTF-8 payload can
carry; optional fields are sometimes absent, sometimes present. Other
packages' tests (the joiner, the trainer, replay) can import these to get
realistic events without hand-writing fixtures.

Needs ``hypothesis`` (a dev dependency); nothing outside tests imports this.
"""

from __future__ import annotations

import base64
import string
from typing import Any, TypeVar, get_args

from hypothesis import strategies as st

from schemas import limits as L
from schemas.events import (
    CheckpointEvent,
    CheckpointTrigger,
    DeadLetter,
    Event,
    FeedbackEvent,
    FeedbackKind,
    InferenceLog,
    Route,
    ShadowScore,
    TrainingExample,
    VersionAction,
    VersionEvent,
    shadow_score_id,
    training_example_id,
)

E = TypeVar("E", bound=Event)

_NAME_FIRST = string.ascii_letters + string.digits
_TOPIC_ALPHABET = _NAME_FIRST + "._-"
_ERROR_KIND_ALPHABET = string.ascii_lowercase + string.digits + "_"


def text(min_size: int = 0, max_size: int = L.MAX_TEXT_CHARS) -> st.SearchStrategy[str]:
    """Any Unicode text that UTF-8 can carry, within the given length."""
    return st.text(st.characters(exclude_categories=["Cs"]), min_size=min_size, max_size=max_size)


def names() -> st.SearchStrategy[str]:
    """Model and version names matching :data:`~schemas.limits.NAME_PATTERN`."""
    return st.builds(
        str.__add__,
        st.sampled_from(_NAME_FIRST),
        st.text(_TOPIC_ALPHABET, max_size=min(L.MAX_NAME_CHARS - 1, 40)),
    ) | st.just("m" * L.MAX_NAME_CHARS)


def ids() -> st.SearchStrategy[str]:
    """Event, request and actor ids: non-empty Unicode, up to the id limit."""
    return text(1, L.MAX_ID_CHARS) | st.uuids().map(lambda u: u.hex)


def timestamps() -> st.SearchStrategy[int]:
    """Epoch milliseconds, including both ends of the allowed range."""
    return st.integers(0, L.MAX_TS_MS)


def counts() -> st.SearchStrategy[int]:
    return st.integers(0, L.MAX_INT)


def finite_floats(
    min_value: float | None = None, max_value: float | None = None
) -> st.SearchStrategy[float]:
    """Finite floats (with -0.0, subnormals and the extremes)."""
    return st.floats(min_value, max_value, allow_nan=False, allow_infinity=False)


def scalars() -> st.SearchStrategy[bool | int | float | str]:
    """Feature values, predictions and labels."""
    return st.one_of(
        st.booleans(),
        st.integers(L.MIN_INT, L.MAX_INT),
        finite_floats(),
        text(max_size=L.MAX_VALUE_CHARS),
    )


def feature_maps(max_size: int = 24) -> st.SearchStrategy[dict[str, bool | int | float | str]]:
    """Feature maps; ``max_size`` keeps examples small (the limit is tested apart)."""
    return st.dictionaries(
        text(1, L.MAX_FEATURE_KEY_CHARS), scalars(), max_size=min(max_size, L.MAX_FEATURES)
    )


def _common() -> dict[str, st.SearchStrategy[Any]]:
    return {
        "schema_version": st.sampled_from(sorted(L.KNOWN_SCHEMA_VERSIONS)),
        "event_id": ids(),
        "ts": timestamps(),
    }


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


@st.composite
def _optional_fields(draw: st.DrawFn, /, **optional: st.SearchStrategy[Any]) -> dict[str, Any]:
    """A dict holding a random subset of ``optional``, each drawn from its strategy."""
    chosen = draw(st.sets(st.sampled_from(sorted(optional)))) if optional else set()
    return {k: draw(optional[k]) for k in chosen}


def _event(
    model: type[E],
    required: dict[str, st.SearchStrategy[Any]],
    optional: dict[str, st.SearchStrategy[Any]],
) -> st.SearchStrategy[E]:
    """Events of ``model``: every required field, a random subset of the optional ones."""

    def build(req: dict[str, Any], opt: dict[str, Any]) -> E:
        return model.model_validate(req | opt)

    return st.builds(
        build, st.fixed_dictionaries(_common() | required), _optional_fields(**optional)
    )


def inference_logs() -> st.SearchStrategy[InferenceLog]:
    return _event(
        InferenceLog,
        {
            "request_id": ids(),
            "model": names(),
            "model_version": names(),
            "features": feature_maps(),
            "prediction": scalars(),
        },
        {
            "scores": _maybe(
                st.dictionaries(
                    text(1, L.MAX_SCORE_LABEL_CHARS), finite_floats(min_value=0.0, max_value=1.0)
                )
            ),
            "route": _maybe(st.sampled_from(get_args(Route))),
            "server": _maybe(ids()),
        },
    )


def feedback_events() -> st.SearchStrategy[FeedbackEvent]:
    return _event(
        FeedbackEvent,
        {"request_id": ids(), "model": names(), "label": scalars()},
        {
            "kind": st.sampled_from(get_args(FeedbackKind)),
            "weight": finite_floats(min_value=0.0),
        },
    )


@st.composite
def training_examples(draw: st.DrawFn) -> TrainingExample:
    """Joined examples, with feedback or with a default label."""
    request_id = draw(ids())
    has_feedback = draw(st.booleans())
    feedback_event_id = draw(ids())
    fields: dict[str, Any] = draw(st.fixed_dictionaries(_common()))
    fields |= {
        "request_id": request_id,
        "model": draw(names()),
        "model_version": draw(names()),
        "features": draw(feature_maps()),
        "label": draw(scalars()),
        "inference_event_id": draw(ids()),
        "inference_ts": draw(timestamps()),
        "join_latency_ms": draw(counts()),
        "example_id": training_example_id(request_id, feedback_event_id if has_feedback else None),
    }
    if has_feedback:
        fields |= {"feedback_event_id": feedback_event_id, "feedback_ts": draw(timestamps())}
    else:
        fields["label_is_default"] = True
    fields |= draw(_optional_fields(weight=finite_floats(min_value=0.0)))
    return TrainingExample.model_validate(fields)


def checkpoint_events() -> st.SearchStrategy[CheckpointEvent]:
    return _event(
        CheckpointEvent,
        {
            "model": names(),
            "version": names(),
            "step": counts(),
            "examples_seen": counts(),
            "trigger": st.sampled_from(get_args(CheckpointTrigger)),
            "location": text(1, L.MAX_TEXT_CHARS),
            "manifest_sha256": st.binary(min_size=32, max_size=32).map(bytes.hex),
        },
        {
            "parent_version": _maybe(names()),
            "metrics": st.dictionaries(
                text(1, L.MAX_METRIC_NAME_CHARS), finite_floats(), max_size=12
            ),
        },
    )


def version_events() -> st.SearchStrategy[VersionEvent]:
    return _event(
        VersionEvent,
        {
            "model": names(),
            "action": st.sampled_from(get_args(VersionAction)),
            "epoch": counts(),
            "actor": ids(),
        },
        {
            "live": _maybe(names()),
            "previous": _maybe(names()),
            "canary": _maybe(names()),
            "canary_percent": finite_floats(min_value=0.0, max_value=100.0),
            "shadow": _maybe(names()),
            "reason": text(),
            "history": st.lists(names(), max_size=L.MAX_ROLLBACK_HISTORY).map(tuple),
            "from_live": _maybe(names()),
            "from_canary": _maybe(names()),
            "from_shadow": _maybe(names()),
        },
    )


def _b64(max_size: int) -> st.SearchStrategy[str]:
    return st.binary(max_size=max_size).map(lambda b: base64.b64encode(b).decode("ascii"))


def dead_letters() -> st.SearchStrategy[DeadLetter]:
    return _event(
        DeadLetter,
        {
            "source_topic": st.text(_TOPIC_ALPHABET, min_size=1, max_size=L.MAX_TOPIC_CHARS),
            "source_partition": st.integers(0, 2**31 - 1),
            "source_offset": counts(),
            "value_b64": _b64(2048),
            "error": text(1, L.MAX_TEXT_CHARS),
            "error_kind": st.builds(
                str.__add__,
                st.sampled_from(string.ascii_lowercase),
                st.text(_ERROR_KIND_ALPHABET, max_size=31),
            ),
        },
        {
            "key_b64": _maybe(_b64(L.MAX_DEAD_LETTER_KEY_BYTES)),
            "truncated": st.booleans(),
            "value_size": _maybe(counts()),
            "value_sha256": _maybe(st.text("0123456789abcdef", min_size=64, max_size=64)),
            "field": _maybe(text(max_size=L.MAX_FIELD_PATH_CHARS)),
        },
    )


def _score_maps() -> st.SearchStrategy[dict[str, float]]:
    return st.dictionaries(
        text(1, L.MAX_SCORE_LABEL_CHARS), finite_floats(min_value=0.0, max_value=1.0)
    )


@st.composite
def shadow_scores(draw: st.DrawFn) -> ShadowScore:
    """Shadow predictions paired with the live answer and the label."""
    request_id, shadow_event_id = draw(ids()), draw(ids())
    fields: dict[str, Any] = draw(st.fixed_dictionaries(_common()))
    fields |= {
        "event_id": shadow_score_id(request_id, shadow_event_id),
        "request_id": request_id,
        "example_id": draw(ids()),
        "model": draw(names()),
        "model_version": draw(names()),
        "shadow_event_id": shadow_event_id,
        "prediction": draw(scalars()),
        "label": draw(scalars()),
        "live_version": draw(names()),
        "live_event_id": draw(ids()),
        "live_ts": draw(timestamps()),
        "live_prediction": draw(scalars()),
    }
    fields |= draw(
        _optional_fields(
            scores=_maybe(_score_maps()),
            live_scores=_maybe(_score_maps()),
            live_route=_maybe(st.sampled_from(["live", "canary"])),
        )
    )
    return ShadowScore.model_validate(fields)


#: Event type -> strategy generating valid events of that type.
EVENT_STRATEGIES: dict[type[Event], st.SearchStrategy[Any]] = {
    InferenceLog: inference_logs(),
    FeedbackEvent: feedback_events(),
    TrainingExample: training_examples(),
    CheckpointEvent: checkpoint_events(),
    VersionEvent: version_events(),
    DeadLetter: dead_letters(),
    ShadowScore: shadow_scores(),
}


def events() -> st.SearchStrategy[Event]:
    """A valid event of any type."""
    return st.one_of(*EVENT_STRATEGIES.values())
