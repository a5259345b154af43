"""Where a reader finds committed versions: the tiers' manifests, or the catalog.

:class:`VersionIndex` is what :class:`~services.checkpoints.reader.CheckpointReader`
asks: which tier holds a committed version, and which versions of a model
are committed. Two answer it:

- :class:`TierIndex` reads the manifests in the tiers (the truth) on every
  call and writes nothing: what a read-only process uses;
- :class:`CatalogIndex`, the store's, answers from the catalog.

The manifests are the truth; :class:`CatalogIndex` syncs the catalog's rows
of a model from them (:func:`~services.checkpoints.scan.scan_model`) the
first time a model is asked about, and answers the two questions the reader
asks (:class:`~services.checkpoints.reader.VersionIndex`): which tier holds a
committed version, and which versions of a model are committed. GC and
reindex sync deeply (every manifest re-read).

A read-only process that must not write any catalog uses the reader's own
:class:`~services.checkpoints.reader.TierIndex` instead, which reads the
manifests each time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Protocol

from schemas.errors import CheckpointNotFoundError, SchemaError
from schemas.manifest import decode_manifest
from services.checkpoints import layout
from services.checkpoints.catalog import Catalog, Tier
from services.checkpoints.pins import PinBook
from services.checkpoints.scan import scan_model
from services.checkpoints.storage import CheckpointStorage

#: Called with (done, total) while long work proceeds.
Progress = Callable[[int, int], None]


class VersionIndex(Protocol):
    """Where the reader looks up which versions are committed, and in which tier."""

    def locate(self, model: str, version: str) -> Tier:
        """The tier to read ``version`` from first; raises CheckpointNotFoundError."""
        ...

    def versions(self, model: str) -> list[str]:
        """The committed versions of ``model``, oldest first."""
        ...


class TierIndex:
    """A :class:`VersionIndex` over the manifests in the tiers, read on every call."""

    def __init__(self, tiers: Mapping[Tier, CheckpointStorage]) -> None:
        self._tiers = dict(tiers)

    def locate(self, model: str, version: str) -> Tier:
        for tier, storage in self._tiers.items():
            if storage.read_manifest(model, version) is not None:
                return tier
        raise CheckpointNotFoundError("checkpoint has no manifest", model=model, version=version)

    def versions(self, model: str) -> list[str]:
        """Version directories whose manifest validates and names them, oldest first."""
        found: set[str] = set()
        for storage in self._tiers.values():
            for name in storage.entries(model):
                if layout.parse_seq(model, name) is None or name in found:
                    continue
                raw = storage.read_manifest(model, name)
                if raw is None:
                    continue
                try:
                    manifest = decode_manifest(raw, model=model, version=name)
                except SchemaError:
                    continue
                if manifest.model == model and manifest.version == name:
                    found.add(name)
        return sorted(found, key=lambda v: layout.parse_seq(model, v) or 0)


class CatalogIndex:
    """Catalog rows synced from the tiers' manifests, once per model and object.

    Parameters
    ----------
    catalog
        The catalog to keep in line (a private ``:memory:`` one in a read-only store).
    tiers
        The storage of each tier this store was given.
    pins
        The pin book (its labels are mirrored into the catalog on sync).
    lock
        The lock the store serialises its commits and GC with.
    """

    def __init__(
        self,
        catalog: Catalog,
        tiers: Mapping[Tier, CheckpointStorage],
        pins: PinBook,
        lock: threading.RLock,
    ) -> None:
        self.catalog = catalog
        self.tiers = dict(tiers)
        self.pins = pins
        self._lock = lock
        self._synced: set[str] = set()

    def sync(self, model: str, *, deep: bool = False) -> None:
        """Bring the catalog rows of ``model`` in line with the committed manifests.

        Done once per object per model (and by GC and reindex); ``deep``
        re-reads every manifest instead of trusting rows that match a directory.
        """
        if model in self._synced and not deep:
            return
        with self._lock:
            scan = scan_model(model, self.tiers, self.catalog, deep=deep)
            self.catalog.sync_model(
                model,
                stale=scan.stale_rows,
                upserts=[
                    (m, tier, self.tiers[tier].location(model, m.version))
                    for m, tier in scan.upserts
                ],
                pins=self.pins.read(model),
            )
            self._synced.add(model)

    def reindex(self, models: list[str], progress: Progress | None = None) -> int:
        """Rebuild the catalog from the manifests; returns the number of checkpoints found."""
        with self._lock:
            self.catalog.clear()
            self._synced.clear()
            for i, model in enumerate(models, start=1):
                self.sync(model, deep=True)
                if progress is not None:
                    progress(i, len(models))
            return len(self.catalog.query(None))

    # -- a VersionIndex ------------------------------------------------------------

    def locate(self, model: str, version: str) -> Tier:
        """The tier the catalog says holds committed ``version``.

        Raises
        ------
        CheckpointNotFoundError
            The catalog has no committed row for it.
        """
        self.sync(model)
        record = self.catalog.get(model, version)
        if record is None or record.status != "committed":
            raise CheckpointNotFoundError("no committed checkpoint", model=model, version=version)
        return record.tier

    def versions(self, model: str) -> list[str]:
        """Committed versions of ``model`` in the catalog, oldest first."""
        self.sync(model)
        return [r.version for r in self.catalog.query(model)]
