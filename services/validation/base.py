"""The seams of the validation gateway and the guard.

:class:`HoldoutExample` is one held-out, attributed example (its request
in the model's holdout share, so the trainer never learned it). A
:class:`VersionEvaluator` scores one checkpoint version on a list of them
and runs the sanity checks; its real implementation loads versions read-only
from the checkpoint store (:mod:`services.validation.evaluate`), a fake one
serves the unit tests of the decisions (:mod:`services.validation.gateway`,
:mod:`services.validation.guard`), which do no I/O of their own beyond what
the evaluator and the pointer they are given do; they return their verdicts
for the agent to publish.

How the pieces meet (``driftloop worker --role gateway``, ``streams/gateway.py``)::

    training-examples --> in holdout share? --> HoldoutBuffer (most recent N)
                                   |                 |
                                   v                 v
                        LiveMetrics (per version)   Guard (live vs replaced)
    shadow-scores --------> LiveMetrics (route shadow), ShadowStage (shadow vs live, paired)
    checkpoint-events --> Gateway (candidate vs live) --> pointer + verdicts

:class:`RecentIds` drops repeated shadow scores by ``event_id`` before both.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from schemas.events import Scalar, TrainingExample
from services.server.routing import in_holdout

#: Sanity check names, as a Verdict's ``checks`` keys.
CHECK_LOADS = "loads"  # the version verified (signature, sizes, hashes) and restored
CHECK_FINITE_WEIGHTS = "finite_weights"  # every weight (tensor, river coefficient) finite
CHECK_FINITE_PREDICTIONS = "finite_predictions"  # every holdout prediction finite


@dataclass(frozen=True, slots=True)
class HoldoutExample:
    """One attributed example of a held-out request.

    ``served_by`` is the version that answered the request (the
    attribution); the gateway re-scores the features with each version it
    judges, so it matters only for reporting.
    """

    request_id: str
    features: Mapping[str, Scalar]
    label: Scalar
    weight: float
    ts: int
    served_by: str

    @classmethod
    def of(cls, example: TrainingExample) -> HoldoutExample:
        return cls(
            request_id=example.request_id,
            features=example.features,
            label=example.label,
            weight=example.weight,
            ts=example.ts,
            served_by=example.model_version,
        )


def is_held_out(request_id: str, holdout_percent: float) -> bool:
    """Whether a request is in the model's holdout share (never learned).

    The trainer skips these examples and the gateway keeps them: both call
    this one function, :func:`services.server.routing.in_holdout` (its own
    salt, independent of the canary share).
    """
    return in_holdout(request_id, holdout_percent)


@dataclass(frozen=True)
class Evaluation:
    """One version scored on examples, with its sanity checks.

    ``value`` is ``metric`` over the ``n`` examples scored (None when a
    check failed or nothing could be scored); ``error`` says what failed,
    with the model, version and path or hash where the failure has one.
    """

    model: str
    version: str
    metric: str
    value: float | None
    n: int
    checks: dict[str, bool] = field(default_factory=dict)
    error: str | None = None
    skipped: int = 0
    """Examples left out because the model refuses their label or features (the
    same for every version of the model, so comparisons stay on equal terms)."""
    losses: Mapping[int, float] | None = None
    """Each scored example's own loss under ``metric`` (larger is worse: 0 or 1
    for accuracy, the absolute or squared error for mae / rmse, the log loss of
    the true class for log_loss / cross_entropy), by its index in the examples
    given. Two versions scored on the same examples are compared request by
    request on these (:func:`services.validation.judging.sign_test`); None
    when the evaluator has no per-example figures."""

    @property
    def passed(self) -> bool:
        """Every check passed and a value was computed."""
        return self.error is None and self.value is not None and all(self.checks.values())


class VersionEvaluator(Protocol):
    """Loads and scores checkpoint versions (read-only)."""

    def evaluate(
        self, model: str, version: str, examples: Sequence[HoldoutExample], metric: str
    ) -> Evaluation:
        """Score ``version`` of ``model`` on ``examples`` by ``metric``.

        Never raises for a bad version: a version that does not verify, does
        not load, has a non-finite weight or predicts a non-finite value is an
        Evaluation whose check is False and whose ``error`` says why.
        """
        ...

    def forget(self, model: str, keep: Sequence[str] = ()) -> None:
        """Drop cached versions of ``model`` except ``keep`` (memory)."""
        ...


class RecentIds:
    """The last ``limit`` event ids seen, to drop repeats of at-least-once deliveries.

    :meth:`add` says whether an id is new; the oldest ids are forgotten first,
    so a repeat further back than ``limit`` events counts again.
    """

    def __init__(self, limit: int = 100_000) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        self.limit = limit
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, event_id: str) -> bool:
        """Remember ``event_id``; True if it was not among the last ``limit``."""
        if event_id in self._ids:
            self._ids.move_to_end(event_id)
            return False
        self._ids[event_id] = None
        while len(self._ids) > self.limit:
            self._ids.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._ids)
