"""Garbage collection: delete what no retention policy keeps, and remove leftovers.

GC works one model at a time in two steps: :func:`plan` decides (pure, no
I/O), and :meth:`GarbageCollector.execute` carries the plan out. What is kept:

- whatever the retention policy keeps, plus pinned checkpoints and what the
  version pointer references, whatever the policy says;
- the newest checkpoint, always, and the newest one whose dependencies are
  all present (what a restore falls back to when the newer ones lost a chain
  member);
- every checkpoint a kept one depends on (files it reuses, a delta's base
  and parent chain), transitively.

Deletion order keeps catalog and storage consistent if GC is killed at any
point: the catalog row is marked ``deleting`` (listings hide it), then
``manifest.json`` is removed (the directory becomes uncommitted, so nothing
loads it), then the files, then the row. Versions are deleted newest first,
so a surviving checkpoint never lacks a dependency. The next GC or reindex
heals whatever an interrupted run left.

Leftovers are directories of interrupted work (temp dirs of dead writers,
version dirs without a manifest: interrupted saves or deletions) and
duplicate copies left by an interrupted tier move; a directory a live process
on this host is still writing is left alone.

A version directory that is pinned or that the version pointer references
is never deleted by GC, whatever state it is in: without its manifest it is
quarantined with the reason (``pinned, manifest missing``) instead of being
removed as an interrupted save (:func:`protect`), and its pin stays — the
label keeps naming the version, so ``checkpoints verify`` reports the pin
and an operator can restore the directory from quarantine. Only an explicit
purge deletes it.

A version directory whose manifest exists but does not validate is not
deleted: it is moved to ``{model}/.quarantine/{version}-{ts}/`` with a note of
the reason (the evidence, and maybe the only copy of a model). GC never
deletes quarantined data on its own; ``CheckpointStore.purge_quarantine``
(``driftloop checkpoints gc --purge-quarantine``) does, when asked.

:class:`GarbageCollector` runs both steps over the pieces it is given (the
catalog index and its tiers, the pin book, the policies); it does not know
the store facade.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import orjson

from services.checkpoints import layout
from services.checkpoints.catalog import CheckpointRecord
from services.checkpoints.index import CatalogIndex
from services.checkpoints.pins import PinBook
from services.checkpoints.retention import (
    KeepPinned,
    KeepReferenced,
    ReferenceSource,
    RetentionPolicy,
)
from services.checkpoints.scan import Leftover, Quarantined, scan_model
from services.checkpoints.sequence import raise_high_water

__all__ = ["GarbageCollector", "GcPlan", "Leftover", "Quarantined", "plan", "protect"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GcPlan:
    """What one GC run on one model keeps, deletes and cleans up."""

    model: str
    kept: dict[str, str]
    delete: list[CheckpointRecord]
    leftovers: list[Leftover] = field(default_factory=list)
    quarantine: list[Leftover] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {
            "model": self.model,
            "kept": self.kept,
            "delete": [r.version for r in self.delete],
            "leftovers": [
                {"tier": x.tier, "name": x.name, "reason": x.reason} for x in self.leftovers
            ],
            "quarantine": [
                {"tier": x.tier, "name": x.name, "reason": x.reason} for x in self.quarantine
            ],
        }


def protect(
    leftovers: Sequence[Leftover],
    pins: Mapping[str, str],
    references: ReferenceSource | None,
    model: str,
) -> tuple[list[Leftover], list[Leftover]]:
    """Split ``leftovers`` into those GC may remove and damaged versions to quarantine.

    A version directory without a manifest is normally an interrupted save or
    deletion; when a pin or the version pointer names it, it is a checkpoint
    that lost its manifest, and deleting it could destroy the only copy.
    Copies left by an interrupted tier move stay removable (the other copy is kept).
    """
    named = {v: f"pinned {label}" for label, v in sorted(pins.items())}
    if references is not None and any(
        layout.parse_seq(model, x.name) is not None for x in leftovers
    ):
        refs = references.references(model)
        for version in (refs.live, refs.canary, refs.shadow, *refs.history):
            if version is not None:
                named.setdefault(version, "referenced by the version pointer")
    removable: list[Leftover] = []
    damaged: list[Leftover] = []
    for x in leftovers:
        why = named.get(x.name)
        if why is not None and x.reason.startswith("no manifest"):
            head = "pinned" if why.startswith("pinned") else why
            damaged.append(Leftover(x.tier, x.name, f"{head}, manifest missing"))
        else:
            removable.append(x)
    return removable, damaged


def _newest_intact(
    checkpoints: Sequence[CheckpointRecord], by_version: Mapping[str, CheckpointRecord]
) -> CheckpointRecord | None:
    """The newest checkpoint all of whose dependencies, transitively, are present."""
    intact: dict[str, bool] = {}

    def ok(version: str) -> bool:
        if version not in intact:
            intact[version] = False  # a cycle is not a chain
            record = by_version.get(version)
            intact[version] = record is not None and all(ok(d) for d in record.dependencies)
        return intact[version]

    for record in sorted(checkpoints, key=lambda c: c.seq):
        ok(record.version)  # oldest first: recursion stays shallow
    return max((c for c in checkpoints if intact[c.version]), key=lambda c: c.seq, default=None)


def plan(
    model: str,
    checkpoints: Sequence[CheckpointRecord],
    policy: RetentionPolicy,
    *,
    now_ms: int,
    references: ReferenceSource | None = None,
    history_depth: int = 3,
    leftovers: Sequence[Leftover] = (),
    quarantine: Sequence[Leftover] = (),
) -> GcPlan:
    """Decide what to keep and delete among the committed ``checkpoints`` of ``model``."""
    if not checkpoints:
        return GcPlan(model, {}, [], list(leftovers), list(quarantine))
    by_version = {c.version: c for c in checkpoints}
    kept: dict[str, str] = {}

    def add(found: dict[str, str]) -> None:
        for version, reason in found.items():
            if version not in by_version:
                continue
            if version not in kept:
                kept[version] = reason
            elif reason not in kept[version].split("; "):
                kept[version] += f"; {reason}"

    newest = max(checkpoints, key=lambda c: c.seq)
    add({newest.version: "newest"})
    intact = _newest_intact(checkpoints, by_version)
    if intact is not None and intact.version != newest.version:
        # The newer ones lost a dependency (quarantined, deleted by hand): this one is
        # what a restore falls back to, so it is never pruned.
        add({intact.version: "newest with an intact chain"})
    add(policy.keep(model, checkpoints, now_ms))
    add(KeepPinned().keep(model, checkpoints, now_ms))
    if references is not None:
        add(KeepReferenced(references, history_depth).keep(model, checkpoints, now_ms))
    # Dependencies of kept checkpoints are kept, transitively.
    todo = list(kept)
    while todo:
        version = todo.pop()
        for dep in sorted(by_version[version].dependencies):
            if dep in by_version and dep not in kept:
                kept[dep] = f"needed by {version}"
                todo.append(dep)
            elif dep in by_version and "needed by" not in kept[dep]:
                kept[dep] += f"; needed by {version}"
    delete = sorted(
        (c for c in checkpoints if c.version not in kept), key=lambda c: c.seq, reverse=True
    )
    return GcPlan(model, kept, delete, list(leftovers), list(quarantine))


class GarbageCollector:
    """Plans and executes GC of the models of one store.

    Parameters
    ----------
    index
        The catalog index (and the tiers it syncs from): GC syncs deeply first.
    pins
        The pin book; pinned versions are kept, and protected when damaged.
    retention
        What to keep beyond the newest, pinned and referenced versions.
    references
        The versions the version pointer references (kept), if known.
    history_depth
        How many previous live versions of the pointer are kept.
    lock
        Serialises GC with the store's commits and tier moves.
    """

    def __init__(
        self,
        index: CatalogIndex,
        *,
        pins: PinBook,
        retention: RetentionPolicy,
        references: ReferenceSource | None,
        history_depth: int,
        lock: threading.RLock,
    ) -> None:
        self.index = index
        self.pins = pins
        self.retention = retention
        self.references = references
        self.history_depth = history_depth
        self._lock = lock

    def collect(self, models: Sequence[str], *, dry_run: bool = False) -> list[GcPlan]:
        """Apply retention, remove leftovers and quarantine corrupt versions; returns the plans."""
        plans = []
        with self._lock:
            for m in models:
                self.index.sync(m, deep=True)
                scan = scan_model(m, self.index.tiers, self.index.catalog, deep=False)
                leftovers, damaged = protect(scan.leftovers, self.pins.read(m), self.references, m)
                p = plan(
                    m,
                    self.index.catalog.query(m),
                    self.retention,
                    now_ms=layout.now_ms(),
                    references=self.references,
                    history_depth=self.history_depth,
                    leftovers=leftovers,
                    quarantine=scan.corrupt + damaged,
                )
                plans.append(p)
                if not dry_run:
                    self.execute(p)
        return plans

    def execute(self, p: GcPlan) -> None:
        """Carry out ``p`` in the order that survives a kill at any point (module docstring)."""
        tiers = self.index.tiers
        catalog = self.index.catalog
        seqs = [r.seq for r in p.delete] + [
            layout.parse_seq(p.model, x.name) or 0 for x in p.leftovers + p.quarantine
        ]
        if seqs:
            raise_high_water(tiers["hot"], p.model, max(seqs))
        for record in p.delete:
            if record.tier not in tiers:
                continue  # this store was not given that tier: leave its copy alone
            catalog.set_status(p.model, record.version, "deleting")
            for storage in tiers.values():
                storage.remove_manifest(p.model, record.version)
            for storage in tiers.values():
                storage.remove_entry(p.model, record.version)
            catalog.remove(p.model, record.version)
        for corrupt in p.quarantine:
            note = {
                "reason": corrupt.reason,
                "version": corrupt.name,
                "quarantined_ts": layout.now_ms(),
            }
            moved = tiers[corrupt.tier].quarantine(p.model, corrupt.name, orjson.dumps(note))
            log.warning(
                "quarantined %s/%s (%s): %s; delete it with `driftloop checkpoints gc "
                "--purge-quarantine`",
                p.model,
                moved,
                corrupt.tier,
                corrupt.reason,
            )
        for leftover in p.leftovers:
            storage = tiers[leftover.tier]
            storage.remove_manifest(p.model, leftover.name)
            storage.remove_entry(p.model, leftover.name)

    def purge(self, found: Sequence[Quarantined]) -> None:
        """Delete the quarantined directories ``found`` for good (only ever on request)."""
        with self._lock:
            for q in found:
                self.index.tiers[q.tier].purge_quarantined(q.model, q.name)
