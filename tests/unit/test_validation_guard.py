"""The guard's decisions: watch after a change, judge on the examples since it, roll back
a poisoned live, cooldown, no re-promotion by the gateway, changes noticed at tick."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.pointer.memory import InMemoryPointer
from services.validation.base import CHECK_FINITE_PREDICTIONS
from services.validation.service import Validation
from tests.unit.validation_fakes import (
    Clock,
    FakeEvaluator,
    Feed,
    FlakyPointer,
    Known,
    M,
    checkpoint,
    config,
    feed,
)

MIN = 10  # guard.min_examples and promotion.min_examples (validation_fakes.config)


class World:
    """v1 live (by an operator, before validation started); then the gateway promotes v2."""

    def __init__(
        self,
        table: dict[str, float | str] | None = None,
        pointer: InMemoryPointer | None = None,
        **guard: Any,
    ) -> None:
        scores: dict[str, float | str] = {"v1": 0.8, "v2": 0.9}
        self.ev = FakeEvaluator(scores | (table or {}))
        self.p = pointer if pointer is not None else FlakyPointer()
        self.p.promote(M, "v1", actor="operator", reason="by hand")
        self.clock = Clock()
        self.val = Validation({M: config(guard=guard)}, self.ev, self.p, clock=self.clock)
        self.feed = Feed()
        assert self.val.tick() == []

    def promote_v2(self) -> None:
        self.val.on_checkpoint(checkpoint("v2"))
        [v] = feed(self.val, self.feed, MIN)
        assert (v.judge, v.decision, v.epoch) == ("gateway", "promote", 2)

    def live(self) -> str | None:
        state = self.p.get(M)
        return state.live if state is not None else None

    def guard(self) -> dict[str, Any]:
        described: dict[str, Any] = self.val.describe()["models"][M]["guard"]
        return described

    def until_verdict(self, limit: int) -> tuple[int, list[Any]]:
        """Feed examples until a verdict comes (at most ``limit``): how many it took, and it."""
        for sent in range(1, limit + 1):
            verdicts = self.val.on_example(self.feed.next())
            if verdicts:
                return sent, verdicts
        return limit, []


@pytest.mark.parametrize("poison", [0.5, CHECK_FINITE_PREDICTIONS])
def test_a_poisoned_live_is_rolled_back_within_two_samples_of_the_promotion(
    poison: float | str,
) -> None:
    w = World()
    w.promote_v2()
    assert w.guard()["watch"]["replaced"] == "v1"
    json.dumps(w.val.describe())  # JSON-able while watching
    w.ev.table["v2"] = poison  # what v2 does on the traffic after its promotion
    sent, [v] = w.until_verdict(2 * MIN)
    assert sent <= 2 * MIN
    assert (v.judge, v.policy, v.decision) == ("guard", "guard", "rollback")
    assert (v.version, v.baseline_version, v.baseline, v.epoch) == ("v2", "v1", 0.8, 3)
    assert (v.n, v.allowance, v.min_examples) == (sent, 0.05, MIN)
    assert "rolled back to v1" in v.reason
    if poison == CHECK_FINITE_PREDICTIONS:
        assert (v.candidate, v.difference, v.checks[CHECK_FINITE_PREDICTIONS]) == (
            None,
            None,
            False,
        )
        assert "finite_predictions failed" in v.reason
    else:
        assert v.candidate == 0.5
        assert v.difference == pytest.approx(-0.3)
        assert "-0.3" in v.reason
        assert "threshold 0.05" in v.reason
    state = w.p.get(M)
    assert state is not None
    assert (state.live, state.epoch) == ("v1", 3)
    assert (w.p.published[-1].action, w.p.published[-1].actor) == ("rollback", "guard")
    assert w.p.published[-1].reason == v.reason
    described = w.val.describe()["models"][M]
    assert described["rolled_back"] == ["v2"]
    assert described["guard"]["watch"] is None
    assert described["live"] == "v1"


def test_the_guard_scores_both_versions_on_exactly_the_examples_since_the_promotion() -> None:
    w = World()
    w.promote_v2()
    before = list(w.feed.sent)
    [v] = feed(w.val, w.feed, MIN)
    since = tuple(w.feed.sent[len(before) :])
    assert v.decision == "keep"
    assert w.ev.calls[-2:] == [("v2", since, "accuracy"), ("v1", since, "accuracy")]
    assert (v.n, v.difference, v.epoch) == (MIN, pytest.approx(0.1), None)
    assert "kept" in v.reason


def test_a_good_live_is_kept_at_each_multiple_until_the_watch_ends() -> None:
    w = World(watch_examples=35)
    w.promote_v2()
    verdicts = feed(w.val, w.feed, 60)
    assert [v.decision for v in verdicts] == ["keep"] * 3  # at 10, 20, 30 (<= 35) since
    assert verdicts[-1].n == 30
    assert "watch over" in verdicts[-1].reason
    assert w.guard()["watch"] is None
    assert "kept" in w.guard()["note"]


def test_a_regression_within_the_threshold_is_kept() -> None:
    w = World(threshold=0.1)
    w.promote_v2()
    w.ev.table["v2"] = 0.75
    [v] = feed(w.val, w.feed, MIN)
    assert v.decision == "keep"
    assert v.difference == pytest.approx(-0.05)
    assert w.live() == "v2"


def test_nothing_better_to_return_to_is_kept() -> None:
    w = World()
    w.promote_v2()
    w.ev.table["v2"] = w.ev.table["v1"] = CHECK_FINITE_PREDICTIONS
    [v] = feed(w.val, w.feed, MIN)
    assert v.decision == "keep"
    assert "nothing better to return to" in v.reason
    assert w.live() == "v2"


def test_after_a_rollback_the_guard_cools_down_and_nothing_is_promoted_meanwhile() -> None:
    w = World({"v3": 0.95})
    w.promote_v2()
    w.ev.table["v2"] = 0.5
    assert [v.decision for v in feed(w.val, w.feed, MIN)] == ["rollback"]
    # a candidate waits out the cooldown: the guard could not judge it meanwhile
    assert w.val.on_checkpoint(checkpoint("v3")) == []
    pending = w.val.describe()["models"][M]["pending"]
    assert "the guard cools down after its rollback" in pending["waiting_for_guard"]
    assert feed(w.val, w.feed, 3 * MIN) == []
    assert w.val.tick() == []
    assert w.guard()["cooldown_remaining_s"] == pytest.approx(30.0)
    w.clock.now += 30.0
    assert w.val.tick() == []  # the cooldown ends
    [v3] = w.val.on_example(w.feed.next())  # judged at the next held-out example
    assert (v3.decision, v3.baseline_version) == ("promote", "v1")
    assert w.guard()["watch"]["live"] == "v3"
    w.ev.table["v3"] = 0.5
    sent, [v] = w.until_verdict(2 * MIN)
    assert sent == MIN
    assert (v.decision, v.version, v.baseline_version) == ("rollback", "v3", "v1")
    assert w.live() == "v1"


def test_the_gateway_never_promotes_a_version_the_guard_rolled_back() -> None:
    w = World({"v5": 0.99})
    w.p.promote(M, "v5", actor="operator", reason="by hand")  # before its checkpoint event
    assert w.val.tick() == []
    assert w.guard()["watch"]["live"] == "v5"
    w.ev.table["v5"] = 0.1
    [rolled] = feed(w.val, w.feed, MIN)
    assert (rolled.decision, rolled.version) == ("rollback", "v5")
    w.ev.table["v5"] = 0.99
    [v] = w.val.on_checkpoint(checkpoint("v5"))  # its late checkpoint event scores well: no
    assert (v.judge, v.decision, v.version) == ("gateway", "reject", "v5")
    assert "rolled back by the guard" in v.reason
    assert w.live() == "v1"
    w.p.promote(M, "v5", actor="operator", reason="I know better")  # an operator still can
    assert w.live() == "v5"


def test_an_operator_promotion_noticed_at_tick_is_watched_from_then_on() -> None:
    w = World({"v7": 0.6})
    assert "was live when validation started" in w.guard()["note"]
    w.p.promote(M, "v7", actor="operator", reason="by hand")
    early = feed(w.val, w.feed, 5)  # before the tick noticed the change: not counted
    assert early == []
    assert w.val.tick() == []
    watch = w.guard()["watch"]
    assert (watch["live"], watch["replaced"], watch["examples_since_promotion"]) == ("v7", "v1", 0)
    marked = len(w.feed.sent)
    [v] = feed(w.val, w.feed, MIN)
    assert (v.decision, v.version, v.baseline_version) == ("rollback", "v7", "v1")
    assert w.ev.scored("v7") == [tuple(w.feed.sent[marked:])]


def test_the_first_promotion_has_nothing_to_compare_with_and_is_not_watched() -> None:
    ev = FakeEvaluator({"v1": 0.8})
    val = Validation({M: config()}, ev, FlakyPointer(), clock=Clock())
    assert val.tick() == []
    [v] = val.on_checkpoint(checkpoint("v1"))
    assert v.decision == "promote"
    guard = val.describe()["models"][M]["guard"]
    assert guard["watch"] is None
    assert "nothing to compare with" in guard["note"]
    assert feed(val, Feed(), 3 * MIN) == []


def test_a_disabled_guard_watches_nothing() -> None:
    w = World(enabled=False)
    w.promote_v2()
    w.ev.table["v2"] = 0.1
    assert feed(w.val, w.feed, 3 * MIN) == []
    assert "disabled" in w.guard()["note"]
    assert w.live() == "v2"


def test_a_rollback_waits_for_redis_and_is_made_when_it_is_back() -> None:
    p = FlakyPointer()
    w = World(pointer=p)
    w.promote_v2()
    w.ev.table["v2"] = 0.5
    feed(w.val, w.feed, MIN - 1)
    p.down = True
    assert feed(w.val, w.feed, 1) == []  # judged a regression; the pointer does not answer
    assert w.guard()["pending_rollback"] == "v2"
    assert w.val.tick() == []
    p.down = False
    [v] = w.val.tick()
    assert (v.decision, v.version, v.epoch) == ("rollback", "v2", 3)
    assert w.live() == "v1"
    assert w.val.tick() == []


def test_a_rollback_whose_reply_was_lost_gets_its_verdict_at_the_next_tick() -> None:
    p = FlakyPointer()
    w = World(pointer=p)
    w.promote_v2()
    w.ev.table["v2"] = 0.5
    p.lost_reply = True
    assert feed(w.val, w.feed, MIN) == []
    assert w.live() == "v1"
    [v] = w.val.tick()
    assert (v.decision, v.epoch) == ("rollback", 3)
    assert "Redis did not confirm" in v.reason
    assert w.val.describe()["models"][M]["rolled_back"] == ["v2"]


def test_a_rollback_raced_by_an_operator_is_dropped_and_the_new_live_watched() -> None:
    p = FlakyPointer()
    w = World({"v8": 0.9}, pointer=p)
    w.promote_v2()
    w.ev.table["v2"] = 0.5
    p.races = ["v8"]  # an operator promotes v8 while the guard rolls v2 back
    assert feed(w.val, w.feed, MIN) == []
    assert w.live() == "v8"
    assert w.val.tick() == []
    assert w.guard()["watch"]["live"] == "v8"
    assert w.val.describe()["models"][M]["rolled_back"] == []


def test_a_refused_rollback_leaves_live_and_is_tried_at_the_next_judgement() -> None:
    known = Known("v1", "v2")
    w = World(pointer=InMemoryPointer(check=known))
    w.promote_v2()
    w.ev.table["v2"] = 0.5
    known.versions.discard("v1")  # v1 no longer verifies
    assert feed(w.val, w.feed, MIN) == []
    assert "refused" in w.guard()["note"]
    assert w.live() == "v2"
    known.versions.add("v1")
    [v] = feed(w.val, w.feed, MIN)
    assert (v.decision, v.n) == ("rollback", 2 * MIN)


def test_a_candidate_waits_until_the_guard_has_judged_the_new_live_once() -> None:
    """One unvalidated change at a time: v3 arrives right after v2's promotion and
    is judged only once the guard has judged v2 on its first sample."""
    w = World({"v3": 0.95})
    w.promote_v2()
    assert w.val.on_checkpoint(checkpoint("v3")) == []  # the buffer has enough: it waits
    pending = w.val.describe()["models"][M]["pending"]
    assert pending["version"] == "v3"
    assert "the guard has not judged v2 yet" in pending["waiting_for_guard"]
    w.ev.table["v3b"] = 0.95
    [superseded] = w.val.on_checkpoint(checkpoint("v3b"))  # newest wins, and says why it waited
    assert (superseded.version, superseded.decision) == ("v3", "superseded")
    assert "it waited: the guard has not judged v2 yet" in superseded.reason
    sent, verdicts = w.until_verdict(2 * MIN)
    assert sent == MIN
    assert [(v.judge, v.version, v.decision) for v in verdicts] == [
        ("guard", "v2", "keep"),
        ("gateway", "v3b", "promote"),
    ]
    assert w.live() == "v3b"


def test_a_candidate_that_fails_while_it_waits_for_the_guard_is_rejected_at_once() -> None:
    """Waiting holds back changes only: a candidate worse than live is refused on
    arrival (a newer one cannot supersede it first), compared once per live epoch."""
    w = World({"v3": 0.95, "bad": 0.1})
    w.promote_v2()
    assert w.val.on_checkpoint(checkpoint("v3")) == []  # passes: waits for the guard
    calls = len(w.ev.calls)
    assert w.val.on_example(w.feed.next()) == []
    assert len(w.ev.calls) == calls  # not compared again at the same live epoch
    [superseded, rejected] = w.val.on_checkpoint(checkpoint("bad"))
    assert (superseded.version, superseded.decision) == ("v3", "superseded")
    assert (rejected.version, rejected.decision, rejected.baseline_version) == (
        "bad",
        "reject",
        "v2",
    )
    assert "rejected (while the candidate waited: the guard has not judged v2" in rejected.reason
    assert w.val.describe()["models"][M]["pending"] is None
    assert w.live() == "v2"


def test_a_version_forced_live_is_judged_by_the_guard_before_any_candidate() -> None:
    """An operator forces a bad v9 live; the trainer's v3, better than v9, waits for
    the guard instead of replacing v9 unjudged; after the rollback to v2 it is
    judged against v2."""
    w = World({"v9": 0.1, "v3": 0.95})
    w.promote_v2()
    feed(w.val, w.feed, MIN)  # the guard keeps v2
    w.p.promote(M, "v9", actor="operator", reason="forced")
    # v3 comes before the guard's tick has noticed v9: it waits all the same
    assert w.val.on_checkpoint(checkpoint("v3")) == []
    pending = w.val.describe()["models"][M]["pending"]
    assert "the guard has not seen v9 go live yet" in pending["waiting_for_guard"]
    assert w.val.tick() == []  # noticed: watched against v2
    sent, verdicts = w.until_verdict(2 * MIN)
    assert sent == MIN  # the guard's first sample
    assert [(v.judge, v.version, v.decision) for v in verdicts] == [("guard", "v9", "rollback")]
    assert w.live() == "v2"
    w.clock.now += 30.0  # the cooldown over, v3 is judged against v2
    assert w.val.tick() == []
    [v3] = w.val.on_example(w.feed.next())
    assert (v3.judge, v3.version, v3.decision, v3.baseline_version) == (
        "gateway",
        "v3",
        "promote",
        "v2",
    )
    assert w.live() == "v3"


def test_a_restarted_gateway_remembers_from_the_log_what_its_guard_rolled_back() -> None:
    from schemas.events import VersionEvent
    from services.validation.service import rolled_back_by_guard

    def change(epoch: int, action: str, live: str, actor: str, from_live: str | None) -> Any:
        return VersionEvent.new(
            model=M, action=action, live=live, epoch=epoch, actor=actor, from_live=from_live
        )

    log = [
        change(4, "rollback", "v2", "guard", "v9"),  # out of order on purpose
        change(1, "promote", "v1", "gateway", None),
        change(2, "promote", "v2", "gateway", "v1"),
        change(3, "promote", "v9", "operator", "v2"),
        change(5, "promote", "v5", "operator", "v2"),
        change(6, "rollback", "v2", "guard", "v5"),
        change(7, "promote", "v5", "alice", "v2"),  # an operator lifts the bar for v5
    ]
    assert rolled_back_by_guard(log) == {M: {"v9"}}
    w = World({"v9": 0.99})
    w.val.remember(rolled_back_by_guard(log) | {"other-model": {"x"}})
    [v] = w.val.on_checkpoint(checkpoint("v9"))
    assert (v.decision, v.version) == ("reject", "v9")
    assert "rolled back by the guard" in v.reason
