"""The gateway's canary policy: set as canary after the holdout comparison, counted on
canary-route examples, promoted or rejected against live, and every pointer error."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import count
from typing import Any

import pytest

from schemas.errors import ConfigError
from services.learning.config import PromotionConfig
from services.pointer.base import PointerState
from services.validation.service import Validation
from tests.unit.validation_fakes import (
    Clock,
    FakeEvaluator,
    Feed,
    FlakyPointer,
    M,
    checkpoint,
    config,
    feed,
    served,
)

_ids: Iterator[int] = count()


def setup(
    table: dict[str, float | str], *, live: str | None = "v1", **promotion: Any
) -> tuple[Validation, FakeEvaluator, FlakyPointer]:
    """Validation of ``m`` in canary mode (guard off), ``live`` promoted by an operator,
    with 10 held-out examples in its buffer."""
    evaluator = FakeEvaluator(table)
    p = FlakyPointer()
    if live is not None:
        p.promote(M, live, actor="operator", reason="by hand")
    policy = {"mode": "canary", "canary_percent": 20.0, "canary_examples": 5} | promotion
    cfg = config(promotion=policy, guard={"enabled": False})
    validation = Validation({M: cfg}, evaluator, p, clock=Clock())
    assert validation.tick() == []
    assert feed(validation, Feed(), 10) == []
    return validation, evaluator, p


def state(p: FlakyPointer) -> PointerState:
    s = p.get(M)
    assert s is not None
    return s


def send(val: Validation, version: str, route: str | None, right: int, wrong: int = 0) -> list[Any]:
    """``right`` then ``wrong`` examples served by ``version`` on ``route``; the verdicts."""
    out: list[Any] = []
    for ok in [True] * right + [False] * wrong:
        out += val.on_example(served(f"c-{next(_ids)}", version, route, right=ok))
    return out


def canary_of(val: Validation) -> dict[str, Any]:
    described: dict[str, Any] = val.describe()["models"][M]["canary"]
    return described


def test_a_candidate_that_passed_the_holdout_comparison_is_set_as_canary() -> None:
    val, _, p = setup({"v1": 0.8, "v2": 0.9})
    [v] = val.on_checkpoint(checkpoint("v2"))
    assert (v.decision, v.policy, v.version, v.baseline_version) == ("canary", "canary", "v2", "v1")
    assert (v.candidate, v.baseline, v.n, v.epoch) == (0.9, 0.8, 10, 2)
    assert "set as canary at 20% of the traffic" in v.reason
    s = state(p)
    assert (s.live, s.canary, s.canary_percent, s.epoch) == ("v1", "v2", 20.0, 2)
    event = p.published[-1]
    assert (event.action, event.actor, event.reason) == ("canary", "gateway", v.reason)
    assert canary_of(val)["version"] == "v2"


def test_a_candidate_that_fails_the_holdout_comparison_is_rejected_without_a_canary() -> None:
    val, _, p = setup({"v1": 0.8, "v2": 0.7})
    [v] = val.on_checkpoint(checkpoint("v2"))
    assert (v.decision, v.policy) == ("reject", "canary")
    assert state(p).canary is None
    assert canary_of(val) is None


def test_with_nothing_live_the_first_candidate_is_promoted_as_there_is_no_canary_to_set() -> None:
    val, _, p = setup({"v1": 0.8}, live=None)
    [v] = val.on_checkpoint(checkpoint("v1"))
    assert (v.decision, v.policy, v.epoch) == ("promote", "canary", 1)
    assert (state(p).live, state(p).canary) == ("v1", None)


def test_the_canary_is_promoted_after_canary_examples_when_not_worse_than_live() -> None:
    val, _, p = setup({"v1": 0.8, "v2": 0.9})
    val.on_checkpoint(checkpoint("v2"))
    assert send(val, "v1", "live", right=8, wrong=2) == []
    assert send(val, "v2", "canary", right=4) == []
    assert canary_of(val)["canary_examples"] == 4
    assert state(p).live == "v1"
    [v] = send(val, "v2", "canary", right=1)
    assert (v.decision, v.policy, v.version, v.baseline_version) == (
        "promote",
        "canary",
        "v2",
        "v1",
    )
    assert (v.candidate, v.baseline, v.n, v.min_examples, v.epoch) == (1.0, 0.8, 5, 5, 3)
    assert v.difference == pytest.approx(0.2)
    assert "on 5 canary-route examples (live: 10 live-route examples)" in v.reason
    s = state(p)
    assert (s.live, s.previous, s.canary, s.canary_percent, s.epoch) == ("v2", "v1", None, 0.0, 3)
    assert (p.published[-1].action, p.published[-1].actor) == ("promote", "gateway")
    assert canary_of(val) is None
    assert send(val, "v2", "canary", right=5) == []  # the run is over


def test_a_canary_worse_than_live_is_rejected_and_cleared() -> None:
    val, _, p = setup({"v1": 0.8, "v2": 0.9}, tolerance=0.1, canary_confidence=0.0)
    val.on_checkpoint(checkpoint("v2"))
    send(val, "v1", "live", right=8, wrong=2)
    [v] = send(val, "v2", "canary", right=3, wrong=2)
    assert (v.decision, v.candidate, v.baseline, v.n, v.epoch) == ("reject", 0.6, 0.8, 5, 3)
    assert v.difference == pytest.approx(-0.2)
    assert "beyond the tolerance 0.1" in v.reason
    assert "the canary cleared" in v.reason
    s = state(p)
    assert (s.live, s.canary, s.epoch) == ("v1", None, 3)
    assert (p.published[-1].action, p.published[-1].actor) == ("clear_canary", "gateway")
    assert val.on_checkpoint(checkpoint("v2")) == []  # judged: a replay is ignored


def test_only_canary_route_examples_of_the_canary_and_live_ones_of_live_are_counted() -> None:
    val, _, _ = setup({"v1": 0.8, "v2": 0.9})
    val.on_checkpoint(checkpoint("v2"))
    send(val, "v9", "canary", right=0, wrong=5)  # another version
    send(val, "v7", "live", right=0, wrong=5)  # a live-route example of another version
    send(val, "v2", "shadow", right=5)
    send(val, "v2", None, right=5)  # no route
    send(val, "v2", "live", right=5)  # the candidate on the live route
    send(val, "v1", "canary", right=0, wrong=5)  # live on the canary route
    val.on_example(served("c-default", "v2", "canary", right=True, default=True))
    val.on_example(served("c-unscored", "v2", "canary", right=True, logged=False))
    described = canary_of(val)
    assert (described["canary_examples"], described["live_examples"]) == (0, 0)
    send(val, "v1", "live", right=1, wrong=1)
    [v] = send(val, "v2", "canary", right=5)
    assert (v.decision, v.candidate, v.baseline, v.n) == ("promote", 1.0, 0.5, 5)
    assert "(live: 2 live-route examples)" in v.reason


def test_a_live_version_without_scored_examples_is_no_baseline() -> None:
    val, _, p = setup({"v1": 0.8, "v2": 0.9})
    val.on_checkpoint(checkpoint("v2"))
    [v] = send(val, "v2", "canary", right=2, wrong=3)
    assert (v.decision, v.candidate, v.baseline, v.difference) == ("promote", 0.4, None, None)
    assert "no baseline" in v.reason
    assert state(p).live == "v2"


def test_newer_candidates_wait_while_the_canary_runs_newest_wins() -> None:
    val, ev, p = setup({"v1": 0.8, "v2": 0.9, "v3": 0.95, "v4": 0.95})
    val.on_checkpoint(checkpoint("v2"))
    assert val.on_checkpoint(checkpoint("v3")) == []
    pending = val.describe()["models"][M]["pending"]
    assert pending["version"] == "v3"
    assert "the canary v2 is running (0 of 5 canary examples)" in pending["waiting_for_canary"]
    assert val.tick() == []
    [old] = val.on_checkpoint(checkpoint("v4"))
    assert (old.decision, old.version) == ("superseded", "v3")
    assert "the canary v2 is running" in old.reason
    assert len(ev.scored("v4")) == 1  # compared with live once, on arrival: it passes, waits
    assert feed(val, Feed(), 3) == []  # held-out examples do not judge it again
    assert len(ev.scored("v4")) == 1
    verdicts = send(val, "v2", "canary", right=5)
    assert [(v.decision, v.version) for v in verdicts] == [("promote", "v2"), ("canary", "v4")]
    assert verdicts[1].baseline_version == "v2"
    s = state(p)
    assert (s.live, s.canary) == ("v2", "v4")


def test_a_canary_worse_only_within_the_noise_of_its_sample_is_promoted() -> None:
    # 0.6 on 5 canary examples against 0.8 on 10 live ones: beyond the tolerance,
    # but two wrong answers of five are no evidence (Welch p about 0.2)
    val, _, p = setup({"v1": 0.8, "v2": 0.9}, tolerance=0.1)
    val.on_checkpoint(checkpoint("v2"))
    send(val, "v1", "live", right=8, wrong=2)
    [v] = send(val, "v2", "canary", right=3, wrong=2)
    assert (v.decision, v.candidate, v.baseline) == ("promote", 0.6, 0.8)
    assert v.p_value is not None
    assert 0.05 < v.p_value < 0.5
    assert "not significant at 0.95; promoted" in v.reason
    assert state(p).live == "v2"


def test_a_canary_plainly_worse_than_live_is_rejected_with_its_p_value() -> None:
    val, _, p = setup({"v1": 0.8, "v2": 0.9}, tolerance=0.1)
    val.on_checkpoint(checkpoint("v2"))
    send(val, "v1", "live", right=8, wrong=2)
    [v] = send(val, "v2", "canary", right=0, wrong=5)
    assert (v.decision, v.candidate) == ("reject", 0.0)
    assert v.p_value is not None
    assert v.p_value < 1e-6
    assert ", significant at 0.95; rejected, the canary cleared" in v.reason
    assert (state(p).live, state(p).canary) == ("v1", None)


def test_welch_needs_two_of_each_and_reads_a_constant_gap_as_certain() -> None:
    from services.validation.judging import welch_worse

    assert welch_worse([1.0], [0.0, 0.0]) is None
    assert welch_worse([1.0, 1.0], [0.0, 0.0]) == 0.0
    assert welch_worse([0.0, 0.0], [1.0, 1.0]) == 1.0
    assert welch_worse([0.0, 1.0], [0.0, 1.0]) == pytest.approx(0.5)


def test_a_candidate_worse_than_live_is_rejected_at_once_while_the_canary_runs() -> None:
    val, _, p = setup({"v1": 0.8, "v2": 0.9, "bad": 0.1})
    val.on_checkpoint(checkpoint("v2"))
    [v] = val.on_checkpoint(checkpoint("bad"))
    assert (v.decision, v.version, v.baseline_version) == ("reject", "bad", "v1")
    assert "rejected (while the candidate waited: the canary v2 is running" in v.reason
    assert val.describe()["models"][M]["pending"] is None
    assert (state(p).live, state(p).canary) == ("v1", "v2")  # the canary run goes on


def test_with_redis_unavailable_while_setting_the_canary_it_is_retried_at_tick() -> None:
    val, ev, p = setup({"v1": 0.8, "v2": 0.9})
    p.changes_down = True
    assert val.on_checkpoint(checkpoint("v2")) == []
    scored = len(ev.calls)
    assert val.tick() == []
    assert "connection refused" in val.describe()["models"][M]["pending"]["blocked"]
    assert state(p).canary is None
    assert send(val, "v2", "canary", right=5) == []  # no canary yet: nothing counted
    p.changes_down = False
    [v] = val.tick()
    assert (v.decision, v.epoch) == ("canary", 2)
    assert len(ev.calls) == scored  # the comparison made stands
    assert state(p).canary == "v2"
    [promoted] = send(val, "v2", "canary", right=5)
    assert promoted.decision == "promote"


def test_a_canary_set_whose_reply_was_lost_gets_its_verdict_at_the_next_tick() -> None:
    val, _, p = setup({"v1": 0.8, "v2": 0.9})
    p.lost_reply = True
    assert val.on_checkpoint(checkpoint("v2")) == []
    assert state(p).canary == "v2"
    [v] = val.tick()
    assert (v.decision, v.epoch) == ("canary", 2)
    assert "Redis did not confirm" in v.reason
    [promoted] = send(val, "v2", "canary", right=5)
    assert (promoted.decision, promoted.epoch) == ("promote", 3)


def test_with_redis_unavailable_when_the_canary_is_decided_the_decision_is_retried_at_tick() -> (
    None
):
    val, _, p = setup({"v1": 0.8, "v2": 0.9})
    val.on_checkpoint(checkpoint("v2"))
    p.down = True
    assert send(val, "v2", "canary", right=5) == []
    assert val.tick() == []
    assert "connection refused" in canary_of(val)["blocked"]
    assert canary_of(val)["decided"] == "promote"
    p.down = False
    [v] = val.tick()
    assert (v.decision, v.n, v.epoch) == ("promote", 5, 3)
    assert (state(p).live, state(p).canary) == ("v2", None)


def test_a_canary_cleared_by_someone_else_is_rejected_at_the_next_tick() -> None:
    val, _, p = setup({"v1": 0.8, "v2": 0.9})
    val.on_checkpoint(checkpoint("v2"))
    p.set_canary(M, None, actor="operator", reason="by hand")
    [v] = val.tick()
    assert (v.decision, v.epoch) == ("reject", None)
    assert "changed by someone else" in v.reason
    assert canary_of(val) is None


def test_a_live_version_changed_under_the_canary_clears_it() -> None:
    val, _, p = setup({"v1": 0.8, "v2": 0.9})
    val.on_checkpoint(checkpoint("v2"))
    p.promote(M, "v9", actor="operator", reason="by hand")
    [v] = val.tick()
    assert (v.decision, v.epoch) == ("reject", 4)
    assert "live changed from v1 to v9" in v.reason
    assert (state(p).live, state(p).canary) == ("v9", None)


def test_the_guard_watches_a_promoted_canary_and_not_a_canary_being_set() -> None:
    p = FlakyPointer()
    p.promote(M, "v0", actor="operator", reason="by hand")
    p.promote(M, "v1", actor="operator", reason="by hand")
    policy = {"mode": "canary", "canary_percent": 20.0, "canary_examples": 5}
    val = Validation(
        {M: config(promotion=policy)}, FakeEvaluator({"v1": 0.8, "v2": 0.9}), p, clock=Clock()
    )
    val.tick()
    feed(val, Feed(), 10)
    [v] = val.on_checkpoint(checkpoint("v2"))
    assert v.decision == "canary"
    assert val.describe()["models"][M]["guard"]["watch"] is None
    [promoted] = send(val, "v2", "canary", right=5)
    assert promoted.decision == "promote"
    watch = val.describe()["models"][M]["guard"]["watch"]
    assert (watch["live"], watch["replaced"]) == ("v2", "v1")


@pytest.mark.parametrize("percent", [0.0, -1.0, 50.5])
def test_the_canary_percent_must_be_above_0_and_at_most_50(percent: float) -> None:
    with pytest.raises(ConfigError, match="canary_percent"):
        config(promotion={"mode": "canary", "canary_percent": percent})


def test_canary_defaults() -> None:
    cfg = PromotionConfig(mode="canary")
    assert (cfg.canary_percent, cfg.canary_examples) == (10.0, 200)


def test_a_live_version_changed_under_the_canary_is_watched_by_the_guard() -> None:
    """The canary's decision is where the gateway first sees an operator's change of
    live: the canary is cleared, the guard watches the new live version, and a newer
    candidate waits for its judgement (the demo's forced poisoned version went
    unwatched and was replaced by the next canary)."""
    ev = FakeEvaluator({"v1": 0.8, "v2": 0.9, "v9": 0.1, "v4": 0.95})
    p = FlakyPointer()
    p.promote(M, "v1", actor="operator", reason="by hand")
    policy = {"mode": "canary", "canary_percent": 20.0, "canary_examples": 5}
    val = Validation({M: config(promotion=policy)}, ev, p, clock=Clock())
    assert val.tick() == []
    source = Feed()
    assert feed(val, source, 10) == []
    [v] = val.on_checkpoint(checkpoint("v2"))
    assert v.decision == "canary"
    p.promote(M, "v9", actor="operator", reason="forced")
    [cleared] = send(val, "v2", "canary", right=5)
    assert (cleared.decision, cleared.version) == ("reject", "v2")
    guard = val.describe()["models"][M]["guard"]
    assert (guard["watch"]["live"], guard["watch"]["replaced"]) == ("v9", "v1")
    assert val.on_checkpoint(checkpoint("v4")) == []  # waits for the guard's judgement of v9
    verdicts = feed(val, source, 10)
    first = verdicts[0]
    assert (first.judge, first.version, first.decision) == ("guard", "v9", "rollback")
    assert state(p).live == "v1"
