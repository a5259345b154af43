"""The gateway's shadow stage: set as shadow after the holdout comparison, judged on
shadow answers paired with live's on the same requests, then the policy goes on."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import count
from typing import Any

import pytest

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
    shadowed,
)

_ids: Iterator[int] = count()


def setup(
    table: dict[str, float | str], *, mode: str = "auto", **promotion: Any
) -> tuple[Validation, FakeEvaluator, FlakyPointer]:
    """Validation of ``m`` with a shadow stage of 4 answers (guard off), ``v1`` live by
    an operator, 10 held-out examples in its buffer."""
    evaluator = FakeEvaluator(table)
    p = FlakyPointer()
    p.promote(M, "v1", actor="operator", reason="by hand")
    policy = {
        "mode": mode,
        "shadow_examples": 4,
        "canary_percent": 20.0,
        "canary_examples": 3,
    } | promotion
    val = Validation(
        {M: config(promotion=policy, guard={"enabled": False})}, evaluator, p, clock=Clock()
    )
    assert val.tick() == []
    assert feed(val, Feed(), 10) == []
    return val, evaluator, p


def state(p: FlakyPointer) -> PointerState:
    s = p.get(M)
    assert s is not None
    return s


def answer(
    val: Validation, version: str, pairs: list[tuple[bool, bool]], live: str = "v1", **kw: Any
) -> list[Any]:
    """Shadow scores of ``version`` against ``live``: (shadow right, live right) each."""
    out: list[Any] = []
    for right, live_right in pairs:
        score = shadowed(f"s-{next(_ids)}", version, live, right=right, live_right=live_right, **kw)
        out += val.on_shadow_score(score)
    return out


def shadow_of(val: Validation) -> dict[str, Any] | None:
    described: dict[str, Any] | None = val.describe()["models"][M]["shadow"]
    return described


def test_a_candidate_that_passed_is_set_as_shadow_then_promoted_on_its_paired_answers() -> None:
    val, _, p = setup({"v1": 0.8, "v2": 0.9})
    [v] = val.on_checkpoint(checkpoint("v2"))
    assert (v.decision, v.policy, v.version, v.baseline_version, v.epoch) == (
        "shadow",
        "auto",
        "v2",
        "v1",
        2,
    )
    assert "set as shadow (judged after 4 shadow answers" in v.reason
    s = state(p)
    assert (s.live, s.shadow, s.epoch) == ("v1", "v2", 2)
    assert (p.published[-1].action, p.published[-1].actor) == ("shadow", "gateway")
    assert answer(val, "v2", [(True, False)] * 3) == []
    described = shadow_of(val)
    assert described is not None
    assert (described["shadow_examples"], described["live_examples"]) == (3, 3)
    [promoted] = answer(val, "v2", [(True, True)])
    assert (promoted.decision, promoted.policy, promoted.n, promoted.min_examples) == (
        "promote",
        "auto",
        4,
        4,
    )
    assert (promoted.candidate, promoted.baseline, promoted.epoch) == (1.0, 0.25, 3)
    assert promoted.difference == pytest.approx(0.75)
    assert "on 4 shadow answers (live: 4 live answers to the same requests)" in promoted.reason
    s = state(p)
    assert (s.live, s.previous, s.shadow, s.epoch) == ("v2", "v1", None, 3)
    assert shadow_of(val) is None


def test_a_shadow_worse_than_live_on_the_same_requests_is_rejected_and_cleared() -> None:
    val, _, p = setup({"v1": 0.8, "v2": 0.9}, tolerance=0.1)
    val.on_checkpoint(checkpoint("v2"))
    [v] = answer(val, "v2", [(False, True), (True, True), (False, True), (True, True)])
    assert (v.decision, v.candidate, v.baseline, v.n, v.epoch) == ("reject", 0.5, 1.0, 4, 3)
    assert "beyond the tolerance 0.1" in v.reason
    assert "the shadow cleared" in v.reason
    s = state(p)
    assert (s.live, s.shadow) == ("v1", None)
    assert (p.published[-1].action, p.published[-1].actor) == ("clear_shadow", "gateway")
    assert val.on_checkpoint(checkpoint("v2")) == []  # judged: a replay is ignored


def test_in_canary_mode_a_passing_shadow_becomes_the_canary_in_one_change() -> None:
    val, _, p = setup({"v1": 0.8, "v2": 0.9}, mode="canary")
    [v] = val.on_checkpoint(checkpoint("v2"))
    assert (v.decision, v.policy) == ("shadow", "canary")
    [c] = answer(val, "v2", [(True, True)] * 4)
    assert (c.decision, c.policy, c.n, c.epoch) == ("canary", "canary", 4, 3)
    assert "set as canary at 20% of the traffic" in c.reason
    s = state(p)
    assert (s.live, s.canary, s.canary_percent, s.shadow, s.epoch) == ("v1", "v2", 20.0, None, 3)
    # the canary stage follows it from here, on canary-route examples
    out: list[Any] = []
    for i in range(3):
        out += val.on_example(served(f"c-{i}", "v2", "canary", right=True))
    [promoted] = out
    assert (promoted.decision, promoted.policy, promoted.epoch) == ("promote", "canary", 4)
    assert state(p).live == "v2"


def test_only_paired_answers_of_the_shadow_against_its_live_version_count() -> None:
    val, _, _ = setup({"v1": 0.8, "v2": 0.9})
    val.on_checkpoint(checkpoint("v2"))
    answer(val, "v9", [(False, True)] * 4)  # another version's shadow
    answer(val, "v2", [(False, True)] * 4, live="v7")  # against another live version
    answer(val, "v2", [(False, True)] * 4, live_route="canary")  # a canary's requests
    val.on_example(served("live-1", "v1", "live", right=True))  # examples are not pairs
    described = shadow_of(val)
    assert described is not None
    assert (described["shadow_examples"], described["live_examples"]) == (0, 0)
    [v] = answer(val, "v2", [(True, False)] * 4, live_route=None)  # a live log without a route
    assert (v.decision, v.n, v.candidate, v.baseline) == ("promote", 4, 1.0, 0.0)


def test_newer_candidates_wait_while_the_shadow_runs_newest_wins() -> None:
    val, ev, p = setup({"v1": 0.8, "v2": 0.9, "v3": 0.95, "v4": 0.95})
    val.on_checkpoint(checkpoint("v2"))
    assert val.on_checkpoint(checkpoint("v3")) == []
    pending = val.describe()["models"][M]["pending"]
    assert "the shadow v2 is running (0 of 4 shadow answers)" in pending["waiting_for_shadow"]
    [old] = val.on_checkpoint(checkpoint("v4"))
    assert (old.decision, old.version) == ("superseded", "v3")
    assert "the shadow v2 is running" in old.reason
    assert len(ev.scored("v4")) == 1  # compared with live once on arrival: passes, waits
    verdicts = answer(val, "v2", [(True, True)] * 4)
    assert [(v.decision, v.version) for v in verdicts] == [("promote", "v2"), ("shadow", "v4")]
    assert (state(p).live, state(p).shadow) == ("v2", "v4")


def test_a_shadow_cleared_by_someone_else_is_rejected_at_the_next_tick() -> None:
    val, _, p = setup({"v1": 0.8, "v2": 0.9})
    val.on_checkpoint(checkpoint("v2"))
    p.set_shadow(M, None, actor="operator", reason="by hand")
    [v] = val.tick()
    assert (v.decision, v.epoch) == ("reject", None)
    assert "changed by someone else" in v.reason
    assert shadow_of(val) is None


def test_a_live_version_changed_under_the_shadow_clears_it() -> None:
    val, _, p = setup({"v1": 0.8, "v2": 0.9})
    val.on_checkpoint(checkpoint("v2"))
    p.promote(M, "v9", actor="operator", reason="by hand")
    [v] = val.tick()
    assert (v.decision, v.epoch) == ("reject", 4)
    assert "live changed from v1 to v9" in v.reason
    assert (state(p).live, state(p).shadow) == ("v9", None)


def test_with_redis_unavailable_the_shadow_decision_is_retried_at_tick() -> None:
    val, ev, p = setup({"v1": 0.8, "v2": 0.9})
    p.changes_down = True
    assert val.on_checkpoint(checkpoint("v2")) == []  # setting the shadow waits
    scored = len(ev.calls)
    p.changes_down = False
    [v] = val.tick()
    assert (v.decision, v.epoch) == ("shadow", 2)
    assert len(ev.calls) == scored  # the comparison made stands
    p.down = True
    assert answer(val, "v2", [(True, True)] * 4) == []
    described = shadow_of(val)
    assert described is not None
    assert described["decided"] == "promote"
    p.down = False
    [promoted] = val.tick()
    assert (promoted.decision, promoted.epoch) == ("promote", 3)
    assert (state(p).live, state(p).shadow) == ("v2", None)


def test_a_shadow_set_whose_reply_was_lost_gets_its_verdict_at_the_next_tick() -> None:
    val, _, p = setup({"v1": 0.8, "v2": 0.9})
    p.lost_reply = True
    assert val.on_checkpoint(checkpoint("v2")) == []
    assert state(p).shadow == "v2"
    [v] = val.tick()
    assert (v.decision, v.epoch) == ("shadow", 2)
    assert "Redis did not confirm" in v.reason
    [promoted] = answer(val, "v2", [(True, True)] * 4)
    assert promoted.decision == "promote"


def test_manual_mode_and_shadow_examples_zero_skip_the_shadow_stage() -> None:
    val, _, p = setup({"v1": 0.8, "v2": 0.9}, mode="manual")
    [v] = val.on_checkpoint(checkpoint("v2"))
    assert v.decision == "hold"
    val, _, p = setup({"v1": 0.8, "v2": 0.9}, shadow_examples=0)
    [v] = val.on_checkpoint(checkpoint("v2"))
    assert (v.decision, state(p).live, state(p).shadow) == ("promote", "v2", None)
