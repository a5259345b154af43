"""The checkpoint store: one facade over the writer, the reader, the catalog and GC.

:class:`CheckpointStore` is what the state layer, the trainer and the CLI's
writing commands call. It composes the pieces, each of which can be used and
tested on its own over injected storage:

- :class:`~services.checkpoints.writer.CheckpointWriter` — the commit path
  (state files, the signed manifest last, the catalog row);
- :class:`~services.checkpoints.reader.CheckpointReader` — verified reads
  (signature before any state file, every file hash-checked), here looking
  versions up in the catalog;
- :class:`~services.checkpoints.index.CatalogIndex` over the SQLite
  :class:`~services.checkpoints.catalog.Catalog` (which holds all the SQL),
  synced lazily from the manifests (the truth) and rebuilt by :meth:`CheckpointStore.reindex`;
- :class:`~services.checkpoints.gc.GarbageCollector`, the pin book and the
  tier moves, applied after each commit when configured.

Storage is injected (``hot``, ``cold``; by default a
:class:`~services.checkpoints.storage.LocalStorage` at ``config.root`` and the
``cold_url`` tier, see :func:`~services.checkpoints.storage.open_tiers`), as
is the catalog. Listing, the
catalog, GC, pins and tier moves read manifests without verifying them: they
never hand out state bytes, and an unsigned manifest is valid, merely
unloadable until :meth:`CheckpointStore.adopt` signs it.

A process that only reads and must never write a catalog (a model server)
opens a bare :class:`~services.checkpoints.reader.CheckpointReader` instead:
:func:`services.checkpoints.opener.open_reader`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Literal

from schemas.errors import CheckpointNotFoundError
from schemas.manifest import CheckpointManifest, ManifestDraft
from services.checkpoints import layout
from services.checkpoints.catalog import Catalog, CheckpointRecord, Tier
from services.checkpoints.config import StoreConfig
from services.checkpoints.files import CheckpointFiles
from services.checkpoints.gc import GarbageCollector, GcPlan, Leftover, Quarantined
from services.checkpoints.index import CatalogIndex, Progress
from services.checkpoints.layout import now_ms
from services.checkpoints.pins import PinBook
from services.checkpoints.reader import CheckpointReader
from services.checkpoints.readonly import ReadOnlyStorage
from services.checkpoints.retention import ReferenceSource, RetentionPolicy, policy_from_config
from services.checkpoints.scan import scan_model
from services.checkpoints.signing import (
    Signer,
    TrustedKeys,
    signer_from_config,
    trusted_from_config,
)
from services.checkpoints.storage import CheckpointStorage, Payload, open_tiers
from services.checkpoints.tiering import TierPolicy, move_to_cold, referenced_versions
from services.checkpoints.writer import CheckpointWriter, Finish

__all__ = ["CheckpointFiles", "CheckpointStore", "Finish", "Progress", "now_ms"]

log = logging.getLogger(__name__)


class CheckpointStore:
    """Atomic, verified, catalogued checkpoints of many models.

    Thread-safe per object: commits, GC and tier moves of one store object
    are serialised by a lock; version assignment is also locked across
    processes on the hot tier.

    With ``read_only`` the store never creates a directory, the catalog file
    or anything else: the tiers refuse writes (:class:`ReadOnlyStorage`) and
    the catalog lives in memory. Processes open it through
    :func:`services.checkpoints.opener.open_store`.

    ``hot``, ``cold`` and ``catalog`` replace the storage and catalog the
    config names (unit tests pass a
    :class:`~services.checkpoints.memory_storage.MemoryStorage` and
    ``Catalog(":memory:")``). Assigning :attr:`hot` or :attr:`cold` later
    recomposes the pieces over the new storage.
    """

    def __init__(
        self,
        config: StoreConfig,
        *,
        references: ReferenceSource | None = None,
        retention: RetentionPolicy | None = None,
        tiering: TierPolicy | None = None,
        read_only: bool = False,
        hot: CheckpointStorage | None = None,
        cold: CheckpointStorage | None = None,
        catalog: Catalog | None = None,
    ) -> None:
        self.config = config
        self.read_only = read_only
        if hot is None or (cold is None and config.cold_url):
            default_hot, default_cold = open_tiers(config)
            hot = hot if hot is not None else default_hot
            cold = cold if cold is not None else default_cold
        if read_only:
            # Every write is refused by the tiers, and the catalog is a private
            # in-memory copy synced from the manifests: nothing is created or changed.
            hot = ReadOnlyStorage(hot)
            cold = ReadOnlyStorage(cold) if cold is not None else None
            catalog = Catalog(":memory:")
        self.catalog = catalog if catalog is not None else Catalog(config.catalog_file)
        self.tiering = tiering if tiering is not None else TierPolicy.from_config(config)
        self.signer: Signer | None = signer_from_config(config)
        self.trusted: TrustedKeys = trusted_from_config(config, self.signer)
        self._lock = threading.RLock()
        self._policy = (
            retention if retention is not None else policy_from_config(config, references)
        )
        self._references = references
        self._compose(hot, cold)

    def _compose(self, hot: CheckpointStorage, cold: CheckpointStorage | None) -> None:
        """Build the pieces over ``hot`` and ``cold`` (again, when a tier is replaced)."""
        tiers: dict[Tier, CheckpointStorage] = {"hot": hot}
        if cold is not None:
            tiers["cold"] = cold
        self.pins = PinBook(hot, self.catalog)
        self.index = CatalogIndex(self.catalog, tiers, self.pins, self._lock)
        self.reader = CheckpointReader(hot, cold, trusted=self.trusted, index=self.index)
        self.writer = CheckpointWriter(
            hot,
            index=self.index,
            reader=self.reader,
            signer=self.signer,
            trusted=self.trusted,
            lock=self._lock,
            root=self.config.root,
            after_commit=self._after_commit,
        )
        self.collector = GarbageCollector(
            self.index,
            pins=self.pins,
            retention=self._policy,
            references=self._references,
            history_depth=self.config.rollback_depth,
            lock=self._lock,
        )

    # -- the pieces' settings ------------------------------------------------------------------

    @property
    def hot(self) -> CheckpointStorage:
        return self.reader.hot

    @hot.setter
    def hot(self, storage: CheckpointStorage) -> None:
        self._compose(storage, self.reader.cold)

    @property
    def cold(self) -> CheckpointStorage | None:
        return self.reader.cold

    @cold.setter
    def cold(self, storage: CheckpointStorage | None) -> None:
        self._compose(self.reader.hot, storage)

    @property
    def retention(self) -> RetentionPolicy:
        return self._policy

    @retention.setter
    def retention(self, policy: RetentionPolicy) -> None:
        self._policy = self.collector.retention = policy

    @property
    def references(self) -> ReferenceSource | None:
        return self._references

    @references.setter
    def references(self, source: ReferenceSource | None) -> None:
        self._references = self.collector.references = source

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def storage(self, tier: Tier) -> CheckpointStorage:
        return self.reader.storage(tier)

    # -- writing -------------------------------------------------------------------------------

    def commit(
        self,
        model: str,
        files: Mapping[str, Payload],
        draft: ManifestDraft,
        *,
        finish: Finish | None = None,
    ) -> CheckpointManifest:
        """Write a new checkpoint of ``model`` and return its manifest.

        See :meth:`CheckpointWriter.commit` (what is written, in which order,
        and what it raises); afterwards GC and tier moves run when
        configured — their failures are logged, the commit stands.
        """
        return self.writer.commit(model, files, draft, finish=finish)

    def require_signer(self) -> Signer:
        """The signing key; a writer calls this at start-up to refuse to run without one.

        Raises
        ------
        ConfigError
            No signing key is configured (see :meth:`CheckpointWriter.require_signer`).
        """
        return self.writer.require_signer()

    def _after_commit(self, model: str) -> None:
        try:
            if self.config.gc_after_commit:
                self.gc(model)
            if self.tiering is not None and self.cold is not None:
                self.move_tiers(model)
        except Exception:
            log.exception("retention/tiering after commit failed (model=%s)", model)

    # -- reading -------------------------------------------------------------------------------

    def open(self, model: str, version: str | None = None) -> CheckpointFiles:
        """A verified reader for ``version`` (None: the newest committed checkpoint).

        The manifest's signature is verified first; see :meth:`CheckpointReader.open`.
        """
        return self.reader.open(model, version)

    def manifest(self, model: str, version: str) -> CheckpointManifest:
        """The manifest of a committed version, not verified: for listing and display only.

        Never base a read of state on it; :meth:`open` verifies.
        """
        layout.check_model(model)
        return self.reader.unverified_manifest(model, version)[0]

    def manifests(self, model: str) -> list[CheckpointManifest]:
        """Manifests of the committed checkpoints of ``model``, oldest first.

        Not verified (listing only): what training resumes from goes through
        :meth:`open` or :meth:`latest`.
        """
        out = []
        for version in self.index.versions(model):
            try:
                out.append(self.reader.unverified_manifest(model, version)[0])
            except CheckpointNotFoundError:
                continue
        return out

    def latest(self, model: str) -> CheckpointManifest | None:
        """The newest committed checkpoint's verified manifest, or None when there is none.

        Raises
        ------
        CheckpointSignatureError
            The newest checkpoint's manifest does not verify (see :meth:`open`).
        """
        try:
            return self.open(model).manifest
        except CheckpointNotFoundError:
            return None

    def query(
        self,
        model: str | None = None,
        *,
        trigger: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        best_by: str | None = None,
        mode: Literal["min", "max"] = "min",
        limit: int | None = None,
        deep: bool = False,
    ) -> list[CheckpointRecord]:
        """Catalogued checkpoints matching the filters (see :meth:`Catalog.query`).

        ``deep`` re-reads every manifest first, so a checkpoint whose manifest
        was damaged since it was catalogued is dropped from the answer.
        """
        for m in [model] if model is not None else self.models():
            self.index.sync(m, deep=deep)
        return self.catalog.query(
            model,
            trigger=trigger,
            since_ms=since_ms,
            until_ms=until_ms,
            best_by=best_by,
            mode=mode,
            limit=limit,
        )

    def record(self, model: str, version: str) -> CheckpointRecord:
        """The catalog row of one committed checkpoint."""
        self.index.sync(model)
        record = self.catalog.get(model, version)
        if record is None or record.status != "committed":
            raise CheckpointNotFoundError("no committed checkpoint", model=model, version=version)
        return record

    def lineage(self, model: str, version: str) -> list[CheckpointRecord]:
        """``version`` and its ancestors still in the store, newest first."""
        self.record(model, version)
        return self.catalog.lineage(model, version)

    def models(self) -> list[str]:
        """Models with a directory in any tier or a row in the catalog."""
        return sorted(set(self.catalog.models()) | set(self.reader.models()))

    # -- catalog upkeep ------------------------------------------------------------------------

    def sync(self, model: str, *, deep: bool = False) -> None:
        """Bring the catalog rows of ``model`` in line with the manifests.

        See :meth:`CatalogIndex.sync` (once per store object and model unless ``deep``).
        """
        self.index.sync(model, deep=deep)

    def invalid(self, model: str) -> list[Leftover]:
        """Directories of ``model`` that are not committed checkpoints.

        Leftovers of interrupted work (GC removes them) and version
        directories with a corrupt manifest (GC quarantines them).
        """
        scan = scan_model(model, self.index.tiers, self.catalog, deep=True)
        return scan.leftovers + scan.corrupt

    def quarantined(self, model: str | None = None) -> list[Quarantined]:
        """Quarantined directories of one model or all, with the reason each was moved."""
        return [q for m in self._models(model) for q in self.reader.quarantined(m)]

    def purge_quarantine(
        self, model: str | None = None, *, dry_run: bool = False
    ) -> list[Quarantined]:
        """Delete quarantined directories for good (only ever on request); returns them."""
        with self._lock:
            found = self.quarantined(model)
            if not dry_run:
                self.collector.purge(found)
            return found

    def reindex(self, progress: Progress | None = None) -> int:
        """Rebuild the catalog from the manifests; returns the number of checkpoints found."""
        with self._lock:
            return self.index.reindex(self.models(), progress)

    def _models(self, model: str | None) -> list[str]:
        return [model] if model is not None else self.models()

    # -- signing -------------------------------------------------------------------------------

    def unsigned(self, model: str | None = None) -> list[tuple[str, str]]:
        """``(model, version)`` of every committed checkpoint whose manifest has no signature."""
        return [
            (m, manifest.version)
            for m in self._models(model)
            for manifest in self.manifests(m)
            if manifest.signature is None
        ]

    def adopt(self, model: str | None = None, progress: Progress | None = None) -> list[str]:
        """Sign every unsigned committed manifest with this store's key; returns their versions.

        See :meth:`CheckpointWriter.adopt`; manifests already signed, by
        whatever key, are left alone.

        Raises
        ------
        ConfigError
            The store has no signing key.
        """
        self.require_signer()
        with self._lock:
            return self.writer.adopt(self.unsigned(model), progress)

    # -- pins ----------------------------------------------------------------------------------

    def pin(self, model: str, version: str, label: str) -> str | None:
        """Pin ``version`` under milestone ``label``; returns the version the label left, if any."""
        with self._lock:
            self.record(model, version)
            return self.pins.pin(model, version, label)

    def unpin(
        self, model: str, *, label: str | None = None, version: str | None = None
    ) -> list[str]:
        """Remove the pin ``label``, or every pin of ``version``; returns the labels removed."""
        with self._lock:
            return self.pins.unpin(model, label=label, version=version)

    # -- lifecycle -----------------------------------------------------------------------------

    def gc(self, model: str | None = None, *, dry_run: bool = False) -> list[GcPlan]:
        """Apply retention, remove leftovers and quarantine corrupt versions; returns the plans.

        Quarantined data is never deleted here (see :meth:`purge_quarantine`).
        """
        with self._lock:
            return self.collector.collect(self._models(model), dry_run=dry_run)

    def move_tiers(self, model: str | None = None, progress: Progress | None = None) -> list[str]:
        """Move checkpoints the tier policy selects to the cold tier; returns their versions."""
        cold = self.cold
        if cold is None or self.tiering is None:
            return []
        moved: list[str] = []
        with self._lock:
            for m in self._models(model):
                self.index.sync(m)
                referenced = referenced_versions(self.references, m, self.config.rollback_depth)
                todo = self.tiering.to_move(self.catalog.query(m), now_ms(), referenced=referenced)
                for i, record in enumerate(todo, start=1):
                    move_to_cold(record, self.hot, cold, self.catalog)
                    moved.append(record.version)
                    if progress is not None:
                        progress(i, len(todo))
        return moved
