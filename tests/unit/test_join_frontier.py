"""The join's frontier per input partition: records skipped on their way to
the agent are detected and read again (streams.frontier)."""

from __future__ import annotations

from streams.frontier import MAX_DROPPED, Frontier

P = ("in", 0)


def test_records_at_or_below_the_frontier_are_handled_and_move_it() -> None:
    frontier = Frontier()
    frontier.reset({P: 5})
    assert frontier.admit(P, 3) == "handle"  # a replay: the join knows it
    assert frontier.handled(P, 3) == 5  # never backwards
    assert frontier.admit(P, 5) == "handle"
    assert frontier.handled(P, 5) == 6


def test_without_a_floor_every_record_is_handled() -> None:
    frontier = Frontier()
    assert frontier.admit(P, 40) == "handle"
    assert frontier.handled(P, 40) == 41
    assert frontier.admit(P, 41) == "handle"


def test_a_record_past_the_frontier_rewinds_and_the_queued_ones_are_dropped() -> None:
    frontier = Frontier()
    frontier.reset({P: 5})
    assert frontier.admit(P, 6) == "rewind"  # offset 5 never reached the agent
    assert frontier.rewinding(P)
    assert frontier.admit(P, 7) == "drop"  # queued before the seek
    assert frontier.admit(P, 8) == "drop"
    assert frontier.floor(P) == 5
    assert frontier.admit(P, 5) == "handle"  # the re-read reached it
    assert not frontier.rewinding(P)
    frontier.handled(P, 5)
    assert frontier.admit(P, 6) == "handle"


def test_the_revealing_record_read_again_first_means_a_real_gap() -> None:
    frontier = Frontier()
    frontier.reset({P: 5})
    assert frontier.admit(P, 9) == "rewind"
    assert frontier.admit(P, 10) == "drop"
    assert frontier.admit(P, 9) == "accept"  # re-read: nothing at 5..8
    assert frontier.handled(P, 9) == 10
    assert frontier.admit(P, 10) == "handle"


def test_a_rewind_that_never_shows_is_made_again() -> None:
    frontier = Frontier()
    frontier.reset({P: 5})
    assert frontier.admit(P, 6) == "rewind"
    verdicts = [frontier.admit(P, 100 + i) for i in range(MAX_DROPPED + 1)]
    assert verdicts[:-1] == ["drop"] * MAX_DROPPED
    assert verdicts[-1] == "rewind"


def test_the_frontier_never_falls_below_what_the_table_says() -> None:
    frontier = Frontier()
    assert frontier.handled(P, 3, known=50) == 50
    assert frontier.floor(P) == 50


def test_partitions_are_independent_and_clear_forgets_all() -> None:
    frontier = Frontier()
    frontier.reset({P: 5, ("in", 1): 0})
    assert frontier.admit(P, 7) == "rewind"
    assert frontier.admit(("in", 1), 0) == "handle"
    frontier.clear()
    assert frontier.floor(P) is None
    assert not frontier.rewinding(P)
    assert frontier.admit(P, 7) == "handle"
