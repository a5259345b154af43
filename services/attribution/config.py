"""Settings of the attribution joiner (``DRIFTLOOP_JOIN_*``).

The joiner pairs each InferenceLog with the FeedbackEvents for the same
``request_id`` that arrive within the *attribution window*, measured in event
time from the inference's ``ts``. *Grace* is how far out of order events may
arrive (in event time) and still be joined:
a window is closed only once every input's watermark has passed
``inference.ts + window + grace`` (see :mod:`services.attribution.expiry`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: How several feedback events for one request become one label.
#: ``first`` emits on the first match, at once; ``last`` and ``sum`` wait for
#: the window to close, because until then a later event may change the label.
FeedbackPolicy = Literal["first", "last", "sum"]
#: What happens when an inference's window closes without feedback:
#: ``drop`` it, or emit it with ``default_label`` flagged ``label_is_default``.
NoFeedbackPolicy = Literal["drop", "default"]


class JoinerConfig(BaseSettings):
    """How the attribution joiner pairs inference logs with feedback.

    Attributes
    ----------
    window_ms
        Attribution window: feedback whose ``ts`` is more than this after its
        inference's ``ts`` is not attributed (it goes to dead-letters as
        ``late``), nor feedback more than this *before* it (clock skew beyond
        that is ``orphan``). Default 10 minutes.
    grace_ms
        Allowed disorder: a window closes when the watermark of every input
        (the largest ``ts`` each topic partition delivered) has passed
        ``inference.ts + window + grace``. An event delivered after its own
        topic partition had passed the end of its window is ``late``.
    idle_ms
        Wall-clock time after which an input partition read up to its high
        watermark, with no record arriving, is released: left out of the
        partition's closing watermark so that it does not hold the other
        input back (counted in ``JoinStats.idle_releases``). 0 never
        releases. Default 5 s.
    feedback_policy
        ``first``, ``last`` or ``sum`` (see :data:`FeedbackPolicy`).
    no_feedback_policy
        ``drop`` or ``default`` (see :data:`NoFeedbackPolicy`).
    default_label, default_weight
        Label and weight of an example emitted under ``no_feedback_policy="default"``.
    closed_retention_ms
        How long (event time, after the attribution window) the joiner
        remembers a closed request, to tell late feedback and duplicates
        from new requests: it is forgotten once every input is ``window +
        grace`` past both ``inference.ts + window + closed_retention`` and
        every event it saw. Defaults to ``window_ms + grace_ms``.
    watermark_persist_step_ms
        Each input's per-partition watermark is written to the changelog-backed state
        whenever it has advanced by at least this much since it was last
        written, and whenever a decision depends on it (a window closes, an
        event is judged late), so a worker that takes over a partition
        resumes close to it and never judges earlier than this one did.
    dead_letter_duplicates
        Also write each duplicate event (same ``event_id`` seen again) to
        dead-letters with ``error_kind="duplicate"``; they are always counted.
    max_feedback_per_request
        Feedback events kept per pending request; more go to dead-letters
        as ``overflow`` (bounds the state a hostile producer can create).
    """

    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_JOIN_", frozen=True, extra="ignore")

    window_ms: int = Field(default=600_000, gt=0)
    grace_ms: int = Field(default=30_000, ge=0)
    feedback_policy: FeedbackPolicy = "first"
    no_feedback_policy: NoFeedbackPolicy = "drop"
    default_label: float = 0.0
    default_weight: float = Field(default=1.0, ge=0)
    closed_retention_ms: int | None = Field(default=None, ge=0)
    watermark_persist_step_ms: int = Field(default=1_000, ge=0)
    idle_ms: int = Field(default=5_000, ge=0)
    dead_letter_duplicates: bool = False
    max_feedback_per_request: int = Field(default=64, ge=1)

    @model_validator(mode="after")
    def _fill_retention(self) -> JoinerConfig:
        if self.closed_retention_ms is None:
            object.__setattr__(self, "closed_retention_ms", self.window_ms + self.grace_ms)
        return self

    @property
    def retention_ms(self) -> int:
        """``closed_retention_ms`` resolved (never None after validation)."""
        assert self.closed_retention_ms is not None  # noqa: S101 - narrows a type that validation guarantees; guards no input
        return self.closed_retention_ms

    @property
    def horizon_ms(self) -> int:
        """``window_ms + grace_ms``: how long after its inference a request stays open."""
        return self.window_ms + self.grace_ms
