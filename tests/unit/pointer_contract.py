"""Behaviour every VersionPointer implementation must show (plain functions, no fixtures).

``tests/unit/test_pointer_memory.py`` runs them on :class:`InMemoryPointer`,
``tests/integration/test_pointer_redis.py`` on :class:`RedisPointer` against
the real Redis. Each takes a ``make(history_depth=..., check=...)`` factory
returning a fresh, empty pointer, and ``outbox()`` listing the events waiting
for the relay.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from schemas.events import VersionEvent
from services.checkpoints.retention import VersionReferences
from services.pointer.base import PointerError, StaleEpochError, VersionRefusedError
from services.pointer.writer import PointerWriter

Make = Callable[..., PointerWriter]
Outbox = Callable[[], list[VersionEvent]]

M = "fraud"


def v(n: int) -> str:
    return f"{M}-{n:06d}"


def first_promote_creates_epoch_one(make: Make, outbox: Outbox) -> None:
    p = make(history_depth=3)
    assert p.get(M) is None
    e = p.promote(M, v(1), actor="alice", reason="first model")
    assert (e.event_id, e.epoch, e.action, e.live, e.from_live) == (
        f"{M}:1",
        1,
        "promote",
        v(1),
        None,
    )
    assert (e.actor, e.reason, e.history) == ("alice", "first model", ())
    state = p.get(M)
    assert state is not None
    assert (state.epoch, state.live, state.previous, state.history) == (1, v(1), None, ())
    assert outbox() == [e]


def promotions_build_a_bounded_history_newest_first(make: Make, outbox: Outbox) -> None:
    p = make(history_depth=2)
    for n in range(1, 5):
        p.promote(M, v(n), actor="a")
    state = p.get(M)
    assert state is not None
    assert (state.epoch, state.live, state.history, state.previous) == (4, v(4), (v(3), v(2)), v(3))
    assert [e.epoch for e in outbox()] == [1, 2, 3, 4]
    assert outbox()[-1].history == (v(3), v(2))
    assert outbox()[-1].from_live == v(3)
    # promoting a version from the history moves it out of the history
    p.promote(M, v(2), actor="a")
    state = p.get(M)
    assert state is not None
    assert (state.live, state.history) == (v(2), (v(4), v(3)))
    with pytest.raises(PointerError, match="already live"):
        p.promote(M, v(2), actor="a")


def rollback_returns_to_previous_or_to_a_version_of_the_history(make: Make, outbox: Outbox) -> None:
    p = make(history_depth=3)
    with pytest.raises(PointerError, match="nothing to roll back"):
        p.rollback(M, actor="a")
    for n in range(1, 5):
        p.promote(M, v(n), actor="a")
    e = p.rollback(M, actor="bob", reason="bad metrics")
    assert (e.action, e.live, e.from_live, e.history, e.epoch) == (
        "rollback",
        v(3),
        v(4),
        (v(2), v(1)),
        5,
    )
    e = p.rollback(M, to=v(1), actor="bob")
    assert (e.live, e.history, e.previous) == (v(1), (), None)
    with pytest.raises(PointerError, match="nothing to roll back"):
        p.rollback(M, actor="a")
    p.promote(M, v(5), actor="a")
    with pytest.raises(PointerError, match="not in the rollback history"):
        p.rollback(M, to=v(4), actor="a")
    state = p.get(M)
    assert state is not None
    assert (state.live, state.epoch) == (v(5), 7)


def canary_and_shadow_are_set_and_cleared(make: Make, outbox: Outbox) -> None:
    p = make(history_depth=3)
    with pytest.raises(PointerError, match="needs a live version"):
        p.set_canary(M, v(2), 10.0, actor="a")
    p.promote(M, v(1), actor="a")
    with pytest.raises(PointerError, match="own canary"):
        p.set_canary(M, v(1), 10.0, actor="a")
    for bad in (0.0, -1.0, 100.5):
        with pytest.raises(PointerError, match="percent"):
            p.set_canary(M, v(2), bad, actor="a")
    e = p.set_canary(M, v(2), 12.5, actor="a", reason="try v2")
    assert (e.action, e.canary, e.canary_percent, e.live) == ("canary", v(2), 12.5, v(1))
    e = p.set_shadow(M, v(3), actor="a")
    assert (e.action, e.shadow, e.canary) == ("shadow", v(3), v(2))
    assert p.references(M) == VersionReferences(live=v(1), canary=v(2), shadow=v(3))
    e = p.set_canary(M, None, actor="a")
    assert (e.action, e.canary, e.canary_percent, e.from_canary) == (
        "clear_canary",
        None,
        0.0,
        v(2),
    )
    with pytest.raises(PointerError, match="no canary"):
        p.set_canary(M, None, actor="a")
    e = p.set_shadow(M, None, actor="a")
    assert (e.action, e.shadow, e.from_shadow) == ("clear_shadow", None, v(3))
    with pytest.raises(PointerError, match="no shadow"):
        p.set_shadow(M, None, actor="a")
    # the shadow made canary leaves the shadow slot, in the same change
    p.set_shadow(M, v(4), actor="a")
    e = p.set_canary(M, v(4), 5.0, actor="a")
    assert (e.canary, e.shadow, e.from_shadow) == (v(4), None, v(4))
    p.set_canary(M, None, actor="a")
    # promoting the canary ends the canary
    p.set_canary(M, v(2), 50.0, actor="a")
    e = p.promote(M, v(2), actor="a")
    assert (e.live, e.canary, e.canary_percent, e.history) == (v(2), None, 0.0, (v(1),))
    state = p.get(M)
    assert state is not None
    assert state.canary is None
    assert state.canary_percent == 0.0
    assert [x.epoch for x in outbox()] == list(range(1, 11))


def a_stale_expected_epoch_changes_nothing(make: Make, outbox: Outbox) -> None:
    p = make(history_depth=3)
    p.promote(M, v(1), actor="a", expected_epoch=0)
    p.promote(M, v(2), actor="a", expected_epoch=1)
    with pytest.raises(StaleEpochError):
        p.promote(M, v(3), actor="late", expected_epoch=1)
    with pytest.raises(StaleEpochError):
        p.rollback(M, actor="late", expected_epoch=1)
    with pytest.raises(StaleEpochError):
        p.set_canary(M, v(3), 5.0, actor="late", expected_epoch=0)
    state = p.get(M)
    assert state is not None
    assert (state.live, state.epoch) == (v(2), 2)
    assert [e.actor for e in outbox()] == ["a", "a"]


class RefuseOdd:
    """A version check refusing odd versions."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def check(self, model: str, version: str) -> None:
        self.asked.append(version)
        if int(version.rsplit("-", 1)[1]) % 2:
            raise VersionRefusedError("odd", model=model, version=version)


def refused_versions_are_never_made_live(make: Make, outbox: Outbox) -> None:
    check = RefuseOdd()
    p = make(history_depth=3, check=check)
    with pytest.raises(VersionRefusedError):
        p.promote(M, v(1), actor="a")
    assert p.get(M) is None
    p.promote(M, v(2), actor="a")
    p.promote(M, v(4), actor="a")
    for change in (
        lambda: p.set_canary(M, v(3), 5.0, actor="a"),
        lambda: p.set_shadow(M, v(5), actor="a"),
        lambda: p.rollback(M, to=v(7), actor="a"),
    ):
        with pytest.raises(VersionRefusedError):
            change()
    # the rollback target is checked too: it may have been damaged since it served
    check_all = RefuseAll()
    p.check = check_all
    with pytest.raises(VersionRefusedError):
        p.rollback(M, actor="a")
    assert check_all.asked == [v(2)]
    state = p.get(M)
    assert state is not None
    assert (state.live, state.epoch) == (v(4), 2)
    assert len(outbox()) == 2


class RefuseAll:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def check(self, model: str, version: str) -> None:
        self.asked.append(version)
        raise VersionRefusedError("no", model=model, version=version)


def racing_writers_lose_no_update(make: Make, outbox: Outbox, *, expect: bool) -> None:
    """Threads promote concurrently; every success is one epoch, in one unbroken chain.

    With ``expect`` each writer passes the epoch it read (a lost race is a
    StaleEpochError it retries itself); without, the pointer retries.
    """
    depth = 3
    writers, each = 6, 8
    p = make(history_depth=depth)
    p.promote(M, v(0), actor="init")
    events: list[VersionEvent] = []
    stale = [0]
    lock = threading.Lock()
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            for i in range(each):
                version = v(1 + w * each + i)
                while True:
                    kwargs: dict[str, Any] = {}
                    if expect:
                        state = p.get(M)
                        assert state is not None
                        kwargs["expected_epoch"] = state.epoch
                    try:
                        e = p.promote(M, version, actor=f"w{w}", **kwargs)
                    except StaleEpochError:
                        with lock:
                            stale[0] += 1
                        continue
                    with lock:
                        events.append(e)
                    break
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    total = writers * each
    assert sorted(e.epoch for e in events) == list(range(2, 2 + total))
    chain = sorted(events, key=lambda e: e.epoch)
    first = outbox()[0]
    for before, after in zip([first, *chain], chain, strict=False):
        assert after.from_live == before.live  # each change saw the one before it
        assert after.history == (before.live, *before.history)[:depth]
    state = p.get(M)
    assert state is not None
    assert state.epoch == 1 + total
    assert state.live == chain[-1].live
    assert len(state.history) == depth
    assert [e.epoch for e in outbox()] == list(range(1, 2 + total))


CONTRACT: list[Callable[[Make, Outbox], None]] = [
    first_promote_creates_epoch_one,
    promotions_build_a_bounded_history_newest_first,
    rollback_returns_to_previous_or_to_a_version_of_the_history,
    canary_and_shadow_are_set_and_cleared,
    a_stale_expected_epoch_changes_nothing,
    refused_versions_are_never_made_live,
    lambda make, outbox: racing_writers_lose_no_update(make, outbox, expect=True),
    lambda make, outbox: racing_writers_lose_no_update(make, outbox, expect=False),
]
CONTRACT_IDS = [
    "first_promote",
    "bounded_history",
    "rollback",
    "canary_shadow",
    "stale_epoch",
    "refused_versions",
    "racing_writers_expected_epoch",
    "racing_writers_retrying",
]
