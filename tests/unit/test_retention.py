"""Retention policies and GC invariants (unit and hypothesis property tests)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.manifest import ManifestDraft
from services.checkpoints import (
    CheckpointRecord,
    CheckpointStore,
    InMemoryReferences,
    KeepAny,
    KeepBest,
    KeepLatest,
    KeepNewerThan,
    KeepOnePer,
    KeepPinned,
    RetentionPolicy,
    VersionReferences,
)
from services.checkpoints.gc import plan
from services.checkpoints.storage import CheckpointStorage
from tests.unit.store_helpers import make_store

HOUR = 3_600_000


def record(
    seq: int,
    ts: int,
    loss: float | None = None,
    pins: tuple[str, ...] = (),
    deps: frozenset[str] = frozenset(),
) -> CheckpointRecord:
    return CheckpointRecord(
        model="m",
        version=f"m-{seq:06d}",
        seq=seq,
        parent_version=None,
        created_ts=ts,
        step=seq,
        examples_seen=0,
        trigger="count",
        metrics={} if loss is None else {"loss": loss},
        key_metric=None,
        label="",
        kind="full",
        base_version=None,
        dependencies=deps,
        tier="hot",
        location="",
        size=0,
        status="committed",
        pins=pins,
    )


def kept(policy: RetentionPolicy, records: Sequence[CheckpointRecord], now: int = 0) -> list[int]:
    return sorted(int(v[-6:]) for v in policy.keep("m", records, now))


def test_each_policy_keeps_what_it_names() -> None:
    rs = [record(i, i * HOUR, loss=[0.5, 0.1, 0.9, 0.3, 0.2][i - 1]) for i in range(1, 6)]
    assert kept(KeepLatest(2), rs) == [4, 5]
    assert kept(KeepBest(2, "loss", "min"), rs) == [2, 5]
    assert kept(KeepBest(1, "loss", "max"), rs) == [3]
    assert kept(KeepNewerThan(2.5 * 3600), rs, now=5 * HOUR) == [3, 4, 5]
    # windows of 2 h aligned to the epoch: [0,2h) [2h,4h) [4h,6h) -> first of each
    assert kept(KeepOnePer(2 * 3600), rs) == [1, 2, 4]
    pinned = [*rs[:2], record(3, 0, pins=("pre-drift",))]
    assert kept(KeepPinned(), pinned) == [3]
    assert kept(KeepAny(KeepLatest(1), KeepBest(1, "loss")), rs) == [2, 5]


def test_gc_keeps_dependencies_of_kept_checkpoints_and_explains_why() -> None:
    rs = [
        record(1, 0),
        record(2, 1),
        record(3, 2, deps=frozenset({"m-000001"})),
        record(4, 3, deps=frozenset({"m-000003"})),
    ]
    p = plan("m", rs, KeepLatest(1), now_ms=10)
    assert sorted(p.kept) == ["m-000001", "m-000003", "m-000004"]
    assert p.kept["m-000003"] == "needed by m-000004"
    assert p.kept["m-000004"] == "newest; latest 1"
    assert [r.version for r in p.delete] == ["m-000002"]


# -- property tests ---------------------------------------------------------------------------

policies = st.lists(
    st.one_of(
        st.builds(KeepLatest, st.integers(0, 4)),
        st.builds(KeepBest, st.integers(0, 3), st.just("loss"), st.sampled_from(["min", "max"])),
        st.builds(KeepOnePer, st.floats(1, 20_000)),
        st.builds(KeepNewerThan, st.floats(1, 20_000)),
    ),
    max_size=3,
).map(lambda ps: KeepAny(*ps))


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[CheckpointRecord], VersionReferences]:
    n = draw(st.integers(1, 12))
    records = []
    for seq in range(1, n + 1):
        deps = draw(st.sets(st.integers(1, seq - 1), max_size=2)) if seq > 1 else set()
        records.append(
            record(
                seq,
                seq * 1000 + draw(st.integers(0, 999)),
                loss=draw(st.none() | st.floats(0, 10)),
                pins=("pin",) if draw(st.booleans()) and draw(st.booleans()) else (),
                deps=frozenset(f"m-{d:06d}" for d in deps),
            )
        )
    versions = [r.version for r in records]
    pick = st.none() | st.sampled_from(versions)
    refs = VersionReferences(
        live=draw(pick),
        canary=draw(pick),
        shadow=draw(pick),
        history=tuple(draw(st.lists(st.sampled_from(versions), max_size=4))),
    )
    return records, refs


@settings(max_examples=150, deadline=None)
@given(histories(), policies, st.integers(0, 3))
def test_newest_pinned_referenced_and_their_dependencies_always_survive(
    history: tuple[list[CheckpointRecord], VersionReferences], policy: KeepAny, depth: int
) -> None:
    records, refs = history
    p = plan(
        "m",
        records,
        policy,
        now_ms=15_000,
        references=InMemoryReferences({"m": refs}),
        history_depth=depth,
    )
    by_version = {r.version: r for r in records}
    must = {records[-1].version} | {r.version for r in records if r.pins}
    must |= {v for v in (refs.live, refs.canary, refs.shadow) if v} | set(refs.history[:depth])
    assert must <= set(p.kept)
    for version in p.kept:
        assert by_version[version].dependencies <= set(p.kept)
    assert set(p.kept).isdisjoint(r.version for r in p.delete)
    assert set(p.kept) | {r.version for r in p.delete} == set(by_version)


class KilledError(Exception):
    """Stands in for SIGKILL at a chosen storage call."""


class DyingStorage:
    """Delegates to a real storage and raises at the ``die_at``-th mutating call."""

    def __init__(self, inner: CheckpointStorage, die_at: int) -> None:
        self._inner = inner
        self._left = die_at

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name in ("remove_manifest", "remove_entry", "write_meta"):

            def dying(*args: Any) -> Any:
                self._left -= 1
                if self._left < 0:
                    raise KilledError(name)
                return attr(*args)

            return dying
        return attr


def build(
    root: Path,
    n: int,
    pins: set[int],
    refs: VersionReferences,
    reuse: set[int],
    policy: RetentionPolicy,
) -> CheckpointStore:
    store = make_store(root, gc_after_commit=False, keep_latest=1)
    store.references = InMemoryReferences({"m": refs})
    store.retention = policy
    prev = None
    for seq in range(1, n + 1):
        draft = ManifestDraft(step=seq, trigger="count", metrics={"loss": (seq * 7 % 5) / 5})
        if seq in reuse and prev is not None:
            entry = prev.file("w.bin")
            assert entry is not None
            ref = entry.model_copy(update={"ref_version": prev.version})
            draft = draft.model_copy(update={"file_refs": {"w.bin": ref}})
            prev = store.commit("m", {"d.bin": b"d%d" % seq}, draft)
        else:
            prev = store.commit("m", {"w.bin": b"w%d" % seq, "d.bin": b"d"}, draft)
        if seq in pins:
            store.pin("m", prev.version, f"milestone-{seq}")
    return store


def committed_dirs(root: Path) -> set[str]:
    d = root / "hot" / "m"
    return {p.name for p in d.iterdir() if p.is_dir() and (p / "manifest.json").exists()}


def all_dirs(root: Path) -> set[str]:
    return {p.name for p in (root / "hot" / "m").iterdir() if p.is_dir()}


store_cases = st.tuples(
    st.integers(1, 7),
    st.sets(st.integers(1, 7), max_size=2),
    st.sets(st.integers(2, 7), max_size=3),
    policies,
    st.none() | st.integers(1, 7),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(store_cases)
def test_gc_is_idempotent(case: tuple[int, set[int], set[int], KeepAny, int | None]) -> None:
    n, pins, reuse, policy, live = case
    refs = VersionReferences(live=f"m-{live:06d}" if live and live <= n else None)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = build(root, n, {p for p in pins if p <= n}, refs, reuse, policy)
        store.gc("m")
        survivors = committed_dirs(root)
        (second,) = store.gc("m")
        assert second.delete == []
        assert second.leftovers == []
        assert committed_dirs(root) == survivors
        for m in store.manifests("m"):
            store.open("m", m.version).verify()  # every survivor still reads in full


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(store_cases, st.integers(0, 12))
def test_gc_killed_at_any_step_leaves_a_consistent_store(
    case: tuple[int, set[int], set[int], KeepAny, int | None], die_at: int
) -> None:
    n, pins, reuse, policy, live = case
    refs = VersionReferences(live=f"m-{live:06d}" if live and live <= n else None)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = build(root, n, {p for p in pins if p <= n}, refs, reuse, policy)
        expected_survivors = set(store.gc("m", dry_run=True)[0].kept)
        store.hot = DyingStorage(store.hot, die_at)  # type: ignore[assignment]  # a proxy, not a LocalStorage
        with contextlib.suppress(KilledError):
            store.gc("m")
        store.close()
        # After the "crash": a fresh process sees only complete checkpoints.
        after = make_store(root, gc_after_commit=False)
        after.references = InMemoryReferences({"m": refs})
        after.retention = policy
        listed = {m.version for m in after.manifests("m")}
        assert listed <= committed_dirs(root)
        assert expected_survivors <= listed
        for version in listed:
            after.open("m", version).verify()
        # The next GC heals: catalog rows == committed dirs, no leftovers on disk.
        after.gc("m")
        rows = {r.version for r in after.catalog.query("m", include_deleting=True)}
        assert rows == committed_dirs(root) == all_dirs(root)
        assert expected_survivors <= rows


def test_gc_never_deletes_the_newest_even_with_an_empty_policy(tmp_path: Path) -> None:
    store = make_store(tmp_path, gc_after_commit=False)
    store.retention = KeepAny()
    for seq in range(3):
        store.commit("m", {"a": b"%d" % seq}, ManifestDraft())
    (p,) = store.gc("m")
    assert [r.version for r in p.delete] == ["m-000002", "m-000001"]
    assert [m.version for m in store.manifests("m")] == ["m-000003"]


def test_referenced_versions_survive_gc_after_commit(tmp_path: Path) -> None:
    refs = InMemoryReferences()
    store = CheckpointStore(
        make_store(tmp_path).config.model_copy(update={"keep_latest": 1, "rollback_depth": 1}),
        references=refs,
    )
    first = store.commit("m", {"a": b"1"}, ManifestDraft())
    refs.set("m", VersionReferences(live=first.version))
    second = store.commit("m", {"a": b"2"}, ManifestDraft())
    refs.set("m", VersionReferences(live=second.version, history=(first.version,)))
    third = store.commit("m", {"a": b"3"}, ManifestDraft())
    # live rolled forward twice; a rollback depth of 1 keeps second but lets first go
    refs.set("m", VersionReferences(live=third.version, history=(second.version, first.version)))
    for i in range(3):
        store.commit("m", {"a": b"x%d" % i}, ManifestDraft())
    assert [m.version for m in store.manifests("m")] == [second.version, third.version, "m-000006"]


@pytest.mark.parametrize("mode", ["min", "max"])
def test_keep_best_ignores_checkpoints_without_the_metric(mode: str) -> None:
    rs = [record(1, 0), record(2, 1, loss=0.4), record(3, 2)]
    assert kept(KeepBest(5, "loss", mode), rs) == [2]  # type: ignore[arg-type]
