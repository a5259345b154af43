"""The guard's significance rule (a paired sign test on the same requests) and its optional
drift detector on the live error stream, which brings a judgement forward but never decides it."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest

from schemas.events import TrainingExample
from services.validation import judging as J
from services.validation.base import Evaluation, is_held_out
from services.validation.evaluate import example_loss
from tests.unit.test_validation_guard import MIN, World
from tests.unit.validation_fakes import Feed, M, served


def _evaluation(losses: dict[int, float] | None) -> Evaluation:
    return Evaluation(M, "v", "accuracy", 0.5, len(losses or {}), losses=losses)


def test_the_upper_tail_is_the_exact_binomial_and_its_approximation_agrees_at_the_switch() -> None:
    assert J.upper_tail(0, 5) == 1.0
    assert J.upper_tail(6, 5) == 0.0
    assert J.upper_tail(3, 3) == 0.125
    assert J.upper_tail(2, 3) == 0.5
    assert J.upper_tail(8, 10) == pytest.approx(56 / 1024)
    exact = J.upper_tail(1_050, 2_000)
    z = (1_050 - 0.5 - 1_000) / math.sqrt(500)
    assert exact == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)), rel=0.02)
    exact_2001 = sum(math.comb(2_001, j) for j in range(1_051, 2_002)) / (1 << 2_001)
    assert J.upper_tail(1_051, 2_001) == pytest.approx(exact_2001, rel=0.02)  # approximated


def test_the_sign_test_counts_requests_where_the_two_differ_and_only_those_both_scored() -> None:
    judged = _evaluation({0: 1.0, 1: 1.0, 2: 0.0, 3: 0.5, 4: 1.0})
    baseline = _evaluation({0: 0.0, 1: 1.0, 2: 1.0, 3: 0.5, 5: 0.0})
    test = J.sign_test(judged, baseline)
    assert test is not None
    assert (test.worse, test.better, test.p) == (1, 1, 0.75)
    assert "worse on 1 of the 2 requests where they differ" in test.describe()
    assert J.sign_test(judged, _evaluation(None)) is None


@pytest.mark.parametrize(
    ("metric", "y_true", "y_pred", "loss"),
    [
        ("accuracy", True, True, 0.0),
        ("accuracy", True, False, 1.0),
        ("mae", 2.0, 3.5, 1.5),
        ("rmse", 2.0, 3.5, 2.25),
        ("log_loss", True, {True: 0.8, False: 0.2}, -math.log(0.8)),
        ("cross_entropy", "b", {"a": 0.5, "b": 0.25}, -math.log(0.25)),
        ("log_loss", True, {False: 1.0}, -math.log(1e-15)),
    ],
)
def test_each_metric_has_a_per_example_loss_whose_mean_is_the_metric(
    metric: str, y_true: Any, y_pred: Any, loss: float
) -> None:
    assert example_loss(metric, y_true, y_pred) == pytest.approx(loss)


def _losses(wrong: set[int]) -> Any:
    """A per-example loss by request id: 1 for the requests numbered in ``wrong``."""
    return lambda rid: 1.0 if int(rid.split("-")[1]) in wrong else 0.0


def _every(step: int) -> set[int]:
    return set(range(0, 100_000, step))


def _upcoming(w: World, n: int) -> list[str]:
    """The request ids of the next ``n`` held-out examples the world's feed sends."""
    done = len(w.feed.sent)
    return list(itertools.islice(Feed(w.feed.percent).ids(), done, done + n))


def test_a_difference_beyond_the_threshold_that_is_not_significant_keeps_live() -> None:
    # 0.6 against 0.8: beyond the threshold 0.05, yet v2 is worse on only 2 of the
    # 10 requests (and no better on any): p = 0.25, a difference of two examples
    w = World()
    w.promote_v2()
    w.ev.table["v2"] = 0.6
    worse = set(_upcoming(w, MIN)[:2])
    w.ev.losses["v2"] = lambda rid: 1.0 if rid in worse else 0.0
    w.ev.losses["v1"] = lambda rid: 0.0
    sent, [v] = w.until_verdict(MIN)
    assert (sent, v.decision, v.p_value) == (MIN, "keep", 0.25)
    assert "worse on 2 of the 2 requests where they differ" in v.reason
    assert "not significant at 0.95" in v.reason
    assert w.live() == "v2"


def test_a_significant_regression_beyond_the_threshold_rolls_back_with_its_p_value() -> None:
    w = World()
    w.promote_v2()
    w.ev.table["v2"] = 0.1
    w.ev.losses["v2"] = lambda rid: 1.0  # wrong on every request
    w.ev.losses["v1"] = lambda rid: 0.0
    sent, [v] = w.until_verdict(2 * MIN)
    assert (v.decision, sent) == ("rollback", MIN)
    assert v.p_value == pytest.approx(0.5**MIN)
    assert f"worse on {MIN} of the {MIN} requests where they differ" in v.reason
    assert ", significant at 0.95" in v.reason
    assert w.live() == "v1"


def test_confidence_zero_lets_the_threshold_alone_decide() -> None:
    w = World(confidence=0.0)
    w.promote_v2()
    w.ev.table["v2"] = 0.6
    w.ev.losses["v2"] = _losses(_every(2))
    w.ev.losses["v1"] = _losses(_every(3))
    _, [v] = w.until_verdict(2 * MIN)
    assert (v.decision, v.p_value) == ("rollback", None)
    assert "significant" not in v.reason


def test_without_per_example_losses_the_reason_says_the_threshold_alone_decided() -> None:
    w = World()
    w.promote_v2()
    w.ev.table["v2"] = 0.5
    _, [v] = w.until_verdict(2 * MIN)
    assert v.decision == "rollback"
    assert "no per-example losses: the threshold alone decides" in v.reason


# -- the detector ------------------------------------------------------------

DETECTOR = {"kind": "DDM", "params": {"warm_start": 30}, "input": "error"}


class Live:
    """Live-route answers of non-held-out requests, and held-out examples, for one world."""

    def __init__(self, world: World) -> None:
        self.w = world
        self.i = 10_000_000

    def answers(self, version: str, n: int, *, wrong_every: int) -> list[Any]:
        """``n`` live-route answers of ``version``, every ``wrong_every``-th one wrong."""
        out: list[Any] = []
        for k in range(n):
            out += self.w.val.on_example(self._served(version, right=(k + 1) % wrong_every != 0))
        return out

    def _served(self, version: str, *, right: bool) -> TrainingExample:
        while True:
            self.i += 1
            rid = f"req-{self.i}"
            if not is_held_out(rid, self.w.feed.percent):
                return served(rid, version, "live", right=right)


def _world(**guard: Any) -> World:
    # 6: at confidence 0.95 the sign test needs at least 5 differing requests (0.5**5 < 0.05)
    return World(detector=DETECTOR, detector_min_examples=6, **guard)


def test_an_alarm_on_the_new_versions_answers_judges_at_the_detector_minimum() -> None:
    w = _world()
    live = Live(w)
    assert live.answers("v1", 200, wrong_every=10) == []  # 10% error before the change
    w.promote_v2()
    w.ev.table["v2"] = 0.1
    w.ev.losses["v2"] = lambda rid: 1.0
    w.ev.losses["v1"] = lambda rid: 0.0
    assert w.until_verdict(3) == (3, [])  # no alarm yet: nothing due before min_examples
    verdicts = live.answers("v2", 60, wrong_every=1)  # v2 answers everything wrong
    assert verdicts == []  # alarmed, but only 3 held-out examples since the change
    guard = w.guard()
    assert guard["watch"]["alarm"].startswith("DDM alarm on the live error stream")
    assert guard["detector"]["alarms"] >= 1
    sent, [v] = w.until_verdict(MIN)
    assert (sent, v.decision, v.n) == (3, "rollback", 6)  # at 6 (< MIN = 10)
    assert v.reason.startswith("DDM alarm on the live error stream after 3 held-out examples: ")
    assert w.live() == "v1"


def test_an_alarm_from_a_drift_that_hurts_both_versions_rolls_nothing_back() -> None:
    w = _world()
    live = Live(w)
    live.answers("v1", 200, wrong_every=10)
    w.promote_v2()
    assert w.until_verdict(6) == (6, [])  # the detector's minimum, before any alarm
    # the traffic changes: v2 (and v1, on the same requests) answer half of it wrong
    w.ev.table.update(v1=0.5, v2=0.5)
    w.ev.losses["v2"] = w.ev.losses["v1"] = _losses(_every(2))
    [v] = live.answers("v2", 80, wrong_every=2)
    assert (v.decision, v.difference) == ("keep", 0.0)
    assert v.reason.startswith("DDM alarm")
    assert w.live() == "v2"


def test_an_alarm_with_no_watched_change_is_counted_as_a_drift_of_the_traffic() -> None:
    w = _world()
    live = Live(w)
    live.answers("v1", 200, wrong_every=10)
    assert live.answers("v1", 80, wrong_every=1) == []
    detector = w.guard()["detector"]
    assert detector["alarms"] >= 1
    assert detector["alarms_without_a_change"] == detector["alarms"]
    assert w.guard()["watch"] is None


def test_answers_without_feedback_or_prediction_and_other_routes_never_reach_the_detector() -> None:
    w = _world()
    rid = next(f"req-{i}" for i in range(10**6) if not is_held_out(f"req-{i}", 50.0))
    w.val.on_example(served(rid, "v1", "live", right=True, default=True))
    w.val.on_example(served(rid + "a", "v1", "live", right=True, logged=False))
    w.val.on_example(served(rid + "b", "v1", "canary", right=True))
    w.val.on_example(served(rid + "c", "v1", "shadow", right=True))
    assert w.guard()["detector"]["answers_seen"] == 0
    w.val.on_example(served(rid + "d", "v1", None, right=True))
    w.val.on_example(served(rid + "e", "v1", "live", right=False))
    assert w.guard()["detector"]["answers_seen"] == 2


def test_a_guard_without_a_detector_reports_none() -> None:
    assert World().guard()["detector"] is None


def test_an_alarm_on_answers_that_come_before_the_change_is_noticed_is_taken_by_its_watch() -> None:
    w = _world()
    live = Live(w)
    live.answers("v1", 200, wrong_every=10)
    w.p.promote(M, "v3", actor="operator", reason="forced")  # noticed at the next tick
    w.ev.table.update(v3=0.1)
    w.ev.losses["v3"] = lambda rid: 1.0
    w.ev.losses["v1"] = lambda rid: 0.0
    assert live.answers("v3", 60, wrong_every=1) == []  # v3's answers come first: alarm
    assert w.guard()["detector"]["alarms_without_a_change"] >= 1
    assert w.val.tick() == []
    guard = w.guard()
    assert guard["watch"]["live"] == "v3"
    assert guard["watch"]["alarm"].startswith("DDM alarm on the live error stream (on v3's")
    assert guard["detector"]["alarms_without_a_change"] == guard["detector"]["alarms"] - 1
    sent, [v] = w.until_verdict(MIN)
    assert (sent, v.decision, v.n) == (6, "rollback", 6)
    assert w.live() == "v1"
