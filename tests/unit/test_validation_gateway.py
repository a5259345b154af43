"""The validation gateway's decisions: bootstrap, wait for examples, same examples,
tolerance, manual hold, replays, newest wins, and every pointer error."""

from __future__ import annotations

import json
from typing import Any

import pytest
from river import linear_model

from schemas.errors import ConfigError
from schemas.limits import MAX_TEXT_CHARS
from services.learning.adapters import ModelAdapter, RiverAdapter
from services.pointer.memory import InMemoryPointer, InMemoryVersionLog
from services.pointer.restore import restore_pointers
from services.validation.base import (
    CHECK_FINITE_PREDICTIONS,
    CHECK_FINITE_WEIGHTS,
    is_held_out,
)
from services.validation.evaluate import StoreEvaluator
from services.validation.service import Validation
from tests.unit.validation_fakes import (
    CHECKS,
    Clock,
    FakeEvaluator,
    Feed,
    FlakyPointer,
    Known,
    M,
    checkpoint,
    config,
    example,
    feed,
)


def setup(
    table: dict[str, float | str],
    *,
    live: str | None = "v1",
    pointer: InMemoryPointer | None = None,
    **promotion: Any,
) -> tuple[Validation, FakeEvaluator, InMemoryPointer]:
    """Validation of ``m`` (guard off), with ``live`` promoted by an operator before it started."""
    evaluator = FakeEvaluator(table)
    p = pointer if pointer is not None else FlakyPointer()
    if live is not None:
        p.promote(M, live, actor="operator", reason="by hand")
    cfg = config(promotion=promotion, guard={"enabled": False})
    validation = Validation({M: cfg}, evaluator, p, clock=Clock())
    assert validation.tick() == []
    return validation, evaluator, p


def live(p: InMemoryPointer) -> str | None:
    state = p.get(M)
    return state.live if state is not None else None


def test_with_nothing_live_the_first_sane_candidate_is_promoted_at_once() -> None:
    val, _, p = setup({"v1": CHECK_FINITE_WEIGHTS, "v2": 0.7}, live=None)
    [rejected] = val.on_checkpoint(checkpoint("v1"))
    assert (rejected.decision, rejected.version, rejected.checks[CHECK_FINITE_WEIGHTS]) == (
        "reject",
        "v1",
        False,
    )
    assert "finite_weights failed" in rejected.reason
    assert p.get(M) is None
    [promoted] = val.on_checkpoint(checkpoint("v2"))  # no example held out yet: no waiting
    assert promoted.decision == "promote"
    assert (promoted.version, promoted.baseline_version, promoted.n, promoted.epoch) == (
        "v2",
        None,
        0,
        1,
    )
    assert (promoted.judge, promoted.policy, promoted.metric) == ("gateway", "auto", "accuracy")
    assert promoted.checks == dict.fromkeys(CHECKS, True)
    assert "nothing is live yet" in promoted.reason
    assert "0 held-out examples" in promoted.reason
    state = p.get(M)
    assert state is not None
    assert (state.live, state.epoch) == ("v2", 1)
    assert (p.published[-1].actor, p.published[-1].reason) == ("gateway", promoted.reason)


def test_bootstrap_scores_the_examples_there_are() -> None:
    val, ev, _ = setup({"v1": 0.7}, live=None)
    source = Feed()
    assert feed(val, source, 3) == []
    [v] = val.on_checkpoint(checkpoint("v1"))
    assert (v.decision, v.n, v.candidate) == ("promote", 3, 0.7)
    assert ev.scored("v1") == [tuple(source.sent)]


def test_a_candidate_waits_for_min_examples_and_is_scored_with_live_on_the_same_ones() -> None:
    val, ev, p = setup({"v1": 0.8, "v2": 0.9})
    source = Feed()
    assert val.on_checkpoint(checkpoint("v2")) == []
    assert feed(val, source, 9) == []
    assert ev.scored("v2") == []
    [v] = feed(val, source, 1)
    assert ev.scored("v2") == ev.scored("v1") == [tuple(source.sent)]
    assert v.decision == "promote"
    assert (v.version, v.baseline_version, v.candidate, v.baseline) == ("v2", "v1", 0.9, 0.8)
    assert v.difference == pytest.approx(0.1)
    assert (v.n, v.allowance, v.min_examples, v.epoch) == (10, 0.0, 10, 2)
    assert "0.9 vs live v1 0.8 on 10 held-out examples" in v.reason
    assert "+0.1" in v.reason
    state = p.get(M)
    assert state is not None
    assert (state.live, state.previous, state.epoch) == ("v2", "v1", 2)
    assert p.published[-1].reason == v.reason


@pytest.mark.parametrize(
    ("score", "decision", "diff"), [(0.84, "reject", "-0.06"), (0.86, "promote", "-0.04")]
)
def test_a_candidate_worse_than_the_tolerance_allows_is_rejected(
    score: float, decision: str, diff: str
) -> None:
    val, _, p = setup({"v1": 0.9, "v2": score}, tolerance=0.05)
    val.on_checkpoint(checkpoint("v2"))
    [v] = feed(val, Feed(), 10)
    assert v.decision == decision
    assert v.difference == pytest.approx(score - 0.9)
    assert (v.allowance, v.epoch is not None) == (0.05, decision == "promote")
    assert diff in v.reason
    assert "tolerance 0.05" in v.reason
    state = p.get(M)
    assert state is not None
    assert state.live == ("v2" if decision == "promote" else "v1")


def test_examples_the_model_refuses_are_named_in_the_reason() -> None:
    val, ev, _ = setup({"v1": 0.8, "v2": 0.9})
    ev.skipped = 2
    feed(val, Feed(), 10)
    [v] = val.on_checkpoint(checkpoint("v2"))
    assert v.decision == "promote"
    assert "on 10 held-out examples (2 skipped: refused by the model)" in v.reason


class FreshRiverLoader:
    """Every version is an untrained river LogisticRegression (it predicts no class yet)."""

    def load(self, model: str, version: str) -> ModelAdapter:
        return RiverAdapter(config(), model=linear_model.LogisticRegression())


@pytest.mark.parametrize("held_out", [0, 3])
def test_with_the_store_evaluator_a_fresh_first_version_is_promoted_on_its_checks(
    held_out: int,
) -> None:
    p = InMemoryPointer()
    evaluator = StoreEvaluator(FreshRiverLoader(), {M: config()})
    val = Validation({M: config()}, evaluator, p, clock=Clock())
    feed(val, Feed(), held_out)
    [v] = val.on_checkpoint(checkpoint("v1"))
    assert (v.decision, v.n, v.epoch) == ("promote", held_out, 1)
    assert v.checks == dict.fromkeys(CHECKS, True)
    assert live(p) == "v1"


def test_for_a_lower_is_better_metric_the_difference_is_baseline_minus_candidate() -> None:
    val, _, _ = setup({"v1": 0.3, "v2": 0.5, "v3": 0.2}, metric="log_loss")
    source = Feed()
    feed(val, source, 10)
    [worse] = val.on_checkpoint(checkpoint("v2"))
    assert (worse.decision, worse.metric) == ("reject", "log_loss")
    assert worse.difference == pytest.approx(-0.2)
    assert "lower is better" in worse.reason
    [better] = val.on_checkpoint(checkpoint("v3"))
    assert better.decision == "promote"
    assert better.difference == pytest.approx(0.1)


def test_a_candidate_that_fails_a_sanity_check_is_rejected() -> None:
    val, _, p = setup({"v1": 0.8, "v2": CHECK_FINITE_PREDICTIONS})
    feed(val, Feed(), 10)
    [v] = val.on_checkpoint(checkpoint("v2"))
    assert (v.decision, v.candidate, v.baseline, v.difference) == ("reject", None, 0.8, None)
    assert v.checks[CHECK_FINITE_PREDICTIONS] is False
    assert "finite_predictions failed" in v.reason
    assert live(p) == "v1"


def test_manual_mode_holds_a_candidate_that_passed() -> None:
    val, _, p = setup({"v1": 0.8, "v2": 0.9}, mode="manual")
    feed(val, Feed(), 10)
    [v] = val.on_checkpoint(checkpoint("v2"))
    assert (v.decision, v.policy, v.epoch) == ("hold", "manual", None)
    assert "an operator promotes" in v.reason
    state = p.get(M)
    assert state is not None
    assert (state.live, state.epoch) == ("v1", 1)


def test_manual_mode_holds_the_first_candidate_too() -> None:
    val, _, p = setup({"v1": 0.8}, live=None, mode="manual")
    [v] = val.on_checkpoint(checkpoint("v1"))
    assert v.decision == "hold"
    assert p.get(M) is None


def test_the_live_version_and_replayed_candidates_are_ignored() -> None:
    val, ev, _ = setup({"v1": 0.8, "v2": 0.7, "v3": 0.9})
    feed(val, Feed(), 10)
    assert val.on_checkpoint(checkpoint("v1")) == []
    assert [v.decision for v in val.on_checkpoint(checkpoint("v2"))] == ["reject"]
    assert [v.decision for v in val.on_checkpoint(checkpoint("v3"))] == ["promote"]
    calls = len(ev.calls)
    for version in ("v1", "v2", "v3"):  # a replay of checkpoint-events
        assert val.on_checkpoint(checkpoint(version)) == []
    assert len(ev.calls) == calls
    assert val.describe()["models"][M]["verdicts"] == {"reject": 1, "promote": 1}


def test_a_newer_candidate_supersedes_the_one_waiting() -> None:
    val, ev, _ = setup({"v1": 0.8, "v2": 0.9, "v3": 0.85})
    source = Feed()
    assert val.on_checkpoint(checkpoint("v2")) == []
    feed(val, source, 4)
    assert val.describe()["models"][M]["pending"]["version"] == "v2"
    [old] = val.on_checkpoint(checkpoint("v3"))
    assert (old.decision, old.version, old.n, old.min_examples) == ("superseded", "v2", 4, 10)
    assert "newer candidate v3" in old.reason
    assert "4 of 10" in old.reason
    [v] = feed(val, source, 6)
    assert (v.decision, v.version) == ("promote", "v3")
    assert ev.scored("v2") == []
    assert val.on_checkpoint(checkpoint("v2")) == []  # superseded counts as judged


def test_a_pointer_changed_while_judging_is_judged_again_against_the_new_live() -> None:
    p = FlakyPointer()
    val, ev, _ = setup({"v1": 0.8, "v2": 0.9, "v9": 0.85}, pointer=p)
    source = Feed()
    feed(val, source, 10)
    p.races = ["v9"]  # an operator promotes v9 between the gateway's read and its promote
    [v] = val.on_checkpoint(checkpoint("v2"))
    assert p.stale_raised == 1
    assert (v.decision, v.baseline_version, v.baseline) == ("promote", "v9", 0.85)
    assert "judged again: the pointer changed from epoch 1" in v.reason
    state = p.get(M)
    assert state is not None
    assert (state.live, state.previous, state.epoch, v.epoch) == ("v2", "v9", 3, 3)
    assert ev.scored("v9") == [tuple(source.sent)]


def test_a_pointer_changed_twice_while_judging_rejects_the_candidate() -> None:
    p = FlakyPointer()
    val, _, _ = setup({"v1": 0.8, "v2": 0.9, "v8": 0.8, "v9": 0.8}, pointer=p)
    feed(val, Feed(), 10)
    p.races = ["v8", "v9"]
    [v] = val.on_checkpoint(checkpoint("v2"))
    assert p.stale_raised == 2
    assert (v.decision, v.epoch) == ("reject", None)
    assert "changed again while judging" in v.reason
    assert live(p) == "v9"


def test_with_redis_unavailable_the_candidate_waits_and_is_judged_when_it_is_back() -> None:
    p = FlakyPointer()
    val, _, _ = setup({"v1": 0.8, "v2": 0.9}, pointer=p)
    feed(val, Feed(), 10)
    p.down = True
    assert val.on_checkpoint(checkpoint("v2")) == []
    assert val.tick() == []
    assert val.tick() == []
    pending = val.describe()["models"][M]["pending"]
    assert pending["version"] == "v2"
    assert "connection refused" in pending["blocked"]
    p.down = False
    [v] = val.tick()
    assert (v.decision, v.version, v.epoch) == ("promote", "v2", 2)
    assert val.describe()["models"][M]["pending"] is None
    assert val.tick() == []


def test_a_failed_promotion_is_retried_without_scoring_again_while_the_pointer_stands() -> None:
    p = FlakyPointer()
    val, ev, _ = setup({"v1": 0.8, "v2": 0.9}, pointer=p)
    source = Feed()
    feed(val, source, 10)
    p.changes_down = True
    assert val.on_checkpoint(checkpoint("v2")) == []
    scored = len(ev.calls)
    assert feed(val, source, 3) == []
    assert val.tick() == []
    p.changes_down = False
    [v] = val.tick()
    assert (v.decision, v.n, v.epoch) == ("promote", 10, 2)
    assert len(ev.calls) == scored


def test_a_live_version_that_cannot_be_scored_is_no_baseline() -> None:
    val, _, p = setup({"v1": CHECK_FINITE_PREDICTIONS, "v2": 0.6})
    feed(val, Feed(), 10)
    [v] = val.on_checkpoint(checkpoint("v2"))
    assert (v.decision, v.baseline_version, v.baseline, v.difference) == (
        "promote",
        "v1",
        None,
        None,
    )
    assert "live v1 cannot be scored (finite_predictions failed" in v.reason
    assert live(p) == "v2"


def test_a_promotion_whose_reply_was_lost_gets_its_verdict_at_the_next_tick() -> None:
    p = FlakyPointer()
    val, _, _ = setup({"v1": 0.8, "v2": 0.9}, pointer=p)
    feed(val, Feed(), 10)
    p.lost_reply = True
    assert val.on_checkpoint(checkpoint("v2")) == []
    assert live(p) == "v2"
    [v] = val.tick()
    assert (v.decision, v.epoch) == ("promote", 2)
    assert "Redis did not confirm" in v.reason
    assert [e.action for e in p.published].count("promote") == 2  # v1, then v2 once


def test_a_version_the_pointer_refuses_is_rejected_with_the_reason() -> None:
    p = InMemoryPointer(check=Known("v1"))
    val, _, _ = setup({"v1": 0.8, "v2": 0.9}, pointer=p)
    feed(val, Feed(), 10)
    [v] = val.on_checkpoint(checkpoint("v2"))
    assert v.decision == "reject"
    assert "the pointer refused it" in v.reason
    assert "not in the store" in v.reason
    assert live(p) == "v1"


def test_a_lost_pointer_keeps_the_candidate_until_it_is_restored() -> None:
    log = InMemoryVersionLog()
    p = InMemoryPointer(log=log)
    val, _, _ = setup({"v1": 0.8, "v2": 0.9}, pointer=p)
    p.relay_pending()
    p.lose_everything()  # Redis flushed: no pointer, but the log knows v1 is live
    source = Feed()
    assert val.on_checkpoint(checkpoint("v2")) == []  # looks like a bootstrap; refused as lost
    assert "pointer restore" in val.describe()["models"][M]["pending"]["blocked"]
    assert val.tick() == []
    restore_pointers(p, log)
    assert val.tick() == []  # v1 is live again: v2 now waits for examples
    [v] = feed(val, source, 10)
    assert (v.decision, v.baseline_version, v.epoch) == ("promote", "v1", 2)


def test_events_of_unconfigured_models_are_ignored_and_counted() -> None:
    val, ev, _ = setup({"v1": 0.8})
    assert val.on_example(example("r1", model="other")) == []
    assert val.on_checkpoint(checkpoint("x1", model="other")) == []
    assert ev.calls == []
    described = val.describe()
    assert described["ignored"] == {"events": 2, "models": {"other": 2}}
    json.dumps(described)  # JSON-able


def test_examples_outside_the_holdout_share_and_duplicates_are_not_kept() -> None:
    val, _, _ = setup({"v1": 0.8})
    kept = Feed().next()
    val.on_example(kept)
    val.on_example(kept)  # delivered twice
    learned = next(f"o{i}" for i in range(1000) if not is_held_out(f"o{i}", 50.0))
    val.on_example(example(learned))
    holdout = val.describe()["models"][M]["holdout"]
    assert (holdout["size"], holdout["added"], holdout["duplicates"]) == (1, 1, 1)
    assert holdout["examples_seen"] == 3


class RaisingEvaluator(FakeEvaluator):
    message = "model code blew up"

    def evaluate(self, model: str, version: str, examples: Any, metric: str) -> Any:
        if version == "v2":
            raise RuntimeError(self.message)
        return super().evaluate(model, version, examples, metric)


def test_an_evaluator_that_raises_rejects_the_candidate_and_judging_goes_on() -> None:
    evaluator = RaisingEvaluator({"v1": 0.8, "v3": 0.9})
    p = FlakyPointer()
    p.promote(M, "v1", actor="operator")
    val = Validation({M: config(guard={"enabled": False})}, evaluator, p, clock=Clock())
    feed(val, Feed(), 10)
    [v] = val.on_checkpoint(checkpoint("v2"))
    assert v.decision == "reject"
    assert "the evaluator raised RuntimeError('model code blew up')" in v.reason
    [v3] = val.on_checkpoint(checkpoint("v3"))
    assert v3.decision == "promote"


def test_a_reason_longer_than_a_verdict_holds_is_cut() -> None:
    evaluator = RaisingEvaluator({"v1": 0.8})
    evaluator.message = "x" * 3000
    val = Validation({M: config()}, evaluator, FlakyPointer(), clock=Clock())
    [v] = val.on_checkpoint(checkpoint("v2"))
    assert v.decision == "reject"
    assert len(v.reason) == MAX_TEXT_CHARS
    assert v.reason.endswith("…")


def test_models_must_be_keyed_by_their_names() -> None:
    with pytest.raises(ConfigError, match="keyed by their names"):
        Validation({"other": config()}, FakeEvaluator(), InMemoryPointer())
