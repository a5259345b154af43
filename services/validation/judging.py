"""What the gateway and the guard share: scoring, the difference, verdicts, outcomes.

Both judges score two versions on the same held-out examples through a
:class:`~services.validation.base.VersionEvaluator` (:func:`evaluate`, which
turns an evaluator that raises into a failed :class:`Evaluation`), compare
the values in the metric's better direction (:func:`difference`) and record
what they decided as a :class:`~schemas.events.Verdict` (:func:`verdict`,
which keeps the reason within the event's limit). A judge's call returns an
:class:`Outcome`: the verdicts it made and the pointer states its own
changes left behind.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.errors import SHUTDOWN_EXCEPTIONS
from schemas.events import Verdict
from schemas.limits import MAX_TEXT_CHARS
from services.learning.metrics import bigger_is_better
from services.pointer.base import PointerState
from services.validation.base import CHECK_LOADS, Evaluation, HoldoutExample, VersionEvaluator

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What one call of a judge did: verdicts made, pointer states its changes left."""

    verdicts: list[Verdict] = field(default_factory=list)
    changes: list[PointerState] = field(default_factory=list)

    def extend(self, other: Outcome) -> None:
        self.verdicts.extend(other.verdicts)
        self.changes.extend(other.changes)


def evaluate(
    evaluator: VersionEvaluator,
    model: str,
    version: str,
    examples: Sequence[HoldoutExample],
    metric: str,
) -> Evaluation:
    """``evaluator.evaluate``; an evaluator that raises gives a failed Evaluation saying so."""
    try:
        return evaluator.evaluate(model, version, examples, metric)
    except SHUTDOWN_EXCEPTIONS:
        raise
    except BaseException as exc:  # one version's failure never stops a judge
        log.exception("evaluating %s of %s raised", version, model)
        return Evaluation(
            model=model,
            version=version,
            metric=metric,
            value=None,
            n=0,
            checks={CHECK_LOADS: False},
            error=f"the evaluator raised {exc!r} (model={model}, version={version})",
        )


def usable(evaluation: Evaluation) -> bool:
    """Every check passed and the value is a finite number."""
    return evaluation.passed and evaluation.value is not None and math.isfinite(evaluation.value)


def sane(evaluation: Evaluation) -> bool:
    """At least one check ran and every check that ran passed; a value is not needed.

    What a first version is judged by when nothing is live: there may be no
    held-out examples yet, and a classifier that has seen no label scores
    none (the evaluation then has no value and an error saying so).
    """
    value = evaluation.value
    checks = evaluation.checks
    return bool(checks) and all(checks.values()) and (value is None or math.isfinite(value))


def skipped(*evaluations: Evaluation | None) -> str:
    """``" (3 skipped: refused by the model)"`` when examples were left out, else ``""``."""
    most = max((e.skipped for e in evaluations if e is not None), default=0)
    return f" ({most} skipped: refused by the model)" if most else ""


def value(evaluation: Evaluation | None) -> float | None:
    """The evaluation's value when it is usable (a Verdict holds finite numbers only)."""
    return evaluation.value if evaluation is not None and usable(evaluation) else None


def difference(metric: str, judged: float, baseline: float) -> float:
    """``judged - baseline`` in the metric's better direction (positive: ``judged`` better)."""
    return judged - baseline if bigger_is_better(metric) else baseline - judged


#: Per-example losses closer than this are a tie in :func:`sign_test`.
_TIE = 1e-12
#: Above this many differing requests :func:`sign_test` uses the normal approximation.
_EXACT_UP_TO = 2_000


@dataclass(frozen=True)
class SignTest:
    """Two versions compared request by request on the same examples.

    ``worse``: requests on which the judged version's own loss is larger than
    the baseline's, ``better``: smaller (ties left out); ``p``: the one-sided
    p-value of the sign test that the judged version is worse, the chance of
    at least ``worse`` of ``worse + better`` under a fair coin.
    """

    worse: int
    better: int
    p: float

    def describe(self) -> str:
        differ = self.worse + self.better
        return f"worse on {self.worse} of the {differ} requests where they differ (p {self.p:.3g})"


def sign_test(judged: Evaluation, baseline: Evaluation) -> SignTest | None:
    """The paired sign test of ``judged`` against ``baseline`` on the examples both
    scored (:attr:`Evaluation.losses`), or None when either has no per-example losses."""
    a, b = judged.losses, baseline.losses
    if a is None or b is None:
        return None
    worse = better = 0
    for index in a.keys() & b.keys():
        gap = a[index] - b[index]
        if gap > _TIE:
            worse += 1
        elif gap < -_TIE:
            better += 1
    return SignTest(worse, better, upper_tail(worse, worse + better))


def upper_tail(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2): exact up to ``_EXACT_UP_TO`` trials, else the
    normal approximation with continuity correction."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if n <= _EXACT_UP_TO:
        return sum(math.comb(n, j) for j in range(k, n + 1)) / (1 << n)
    z = (k - 0.5 - n / 2) / math.sqrt(n / 4)
    return 0.5 * math.erfc(z / math.sqrt(2))


def welch_worse(judged: Sequence[float], baseline: Sequence[float]) -> float | None:
    """The one-sided p-value that ``judged``'s mean loss is above ``baseline``'s, from
    per-example losses of different requests (Welch's z, the normal approximation);
    None with fewer than two of either."""
    n, m = len(judged), len(baseline)
    if n < 2 or m < 2:
        return None
    mean_j, mean_b = sum(judged) / n, sum(baseline) / m
    var_j = sum((x - mean_j) ** 2 for x in judged) / (n - 1)
    var_b = sum((x - mean_b) ** 2 for x in baseline) / (m - 1)
    se = math.sqrt(var_j / n + var_b / m)
    gap = mean_j - mean_b
    if se == 0.0:
        return 0.0 if gap > 0 else 1.0
    return 0.5 * math.erfc(gap / se / math.sqrt(2))


def direction(metric: str) -> str:
    return "higher" if bigger_is_better(metric) else "lower"


def failure(evaluation: Evaluation) -> str:
    """Which checks failed and why, in words."""
    failed = [name for name, ok in evaluation.checks.items() if not ok]
    what = ", ".join(failed) if failed else "scoring"
    why = evaluation.error or (
        f"{evaluation.metric} is {evaluation.value}"
        if evaluation.value is not None
        else "no value was computed"
    )
    return f"{what} failed: {why}"


def passed_checks(evaluation: Evaluation) -> str:
    return ", ".join(evaluation.checks) or "none ran"


def num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def signed(x: float) -> str:
    return f"{x:+.4g}"


def verdict(**fields: Any) -> Verdict:
    """``Verdict.new(**fields)`` with the reason cut to the event's limit."""
    fields["reason"] = cut(str(fields.get("reason", "")))
    return Verdict.new(**fields)


def cut(reason: str) -> str:
    """A reason short enough for a VersionEvent (same limit as a Verdict's)."""
    return reason if len(reason) <= MAX_TEXT_CHARS else reason[: MAX_TEXT_CHARS - 1] + "…"
