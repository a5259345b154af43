"""The checkpoint store: commit, open, list, pin, GC, reindex and tier moves.

:class:`CheckpointStore` is what the state layer and the CLI call. It writes
through the storage seam (hot :class:`LocalStorage`, optional cold
:class:`FsspecStorage`), records checkpoints in the SQLite :class:`Catalog`
and applies retention and tiering after each commit when configured. The
manifests are the truth; the catalog is synced from them lazily and rebuilt
by :meth:`CheckpointStore.reindex`.

Authenticity before deserialization: :meth:`CheckpointStore.commit` signs
every manifest with the store's signing key (a store without one refuses to
commit) and :meth:`CheckpointStore.open` — the only way to read state bytes —
verifies the manifest's signature, and that it names the model and version
opened, before a reader exists; a reader verifies the manifest of every older
checkpoint it reads reused files from the same way. Listing, the catalog,
GC, pins and tier moves read manifests without verifying them: they never
hand out state bytes, and an unsigned manifest is valid, merely unloadable
until :meth:`CheckpointStore.adopt` signs it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Literal

import orjson

from schemas.errors import (
    CheckpointCorruptError,
    CheckpointError,
    CheckpointNotFoundError,
    ConfigError,
    DriftloopError,
    SchemaError,
)
from schemas.manifest import (
    CheckpointManifest,
    FileEntry,
    ManifestDraft,
    check_file_name,
    decode_manifest,
    encode_manifest,
    make_label,
)
from services.checkpoints import layout
from services.checkpoints.catalog import Catalog, CheckpointRecord, Tier
from services.checkpoints.config import StoreConfig
from services.checkpoints.gc import GcPlan, Leftover, Quarantined, plan, protect
from services.checkpoints.pins import PinBook
from services.checkpoints.readonly import ReadOnlyStorage
from services.checkpoints.retention import ReferenceSource, RetentionPolicy, policy_from_config
from services.checkpoints.scan import scan_model
from services.checkpoints.signing import (
    Signer,
    TrustedKeys,
    signer_from_config,
    trusted_from_config,
)
from services.checkpoints.storage import (
    CheckpointStorage,
    LocalStorage,
    Payload,
    open_storage,
    payload_size,
)
from services.checkpoints.tiering import TierPolicy, move_to_cold
from services.config import redact_url

log = logging.getLogger(__name__)

#: Called with (done, total) while long work proceeds.
Progress = Callable[[int, int], None]
#: Completes a draft once the files are written, given the entries the store computed.
Finish = Callable[[ManifestDraft, Mapping[str, FileEntry]], ManifestDraft]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class CheckpointReader:
    """Read access to one committed checkpoint; every read is verified.

    Obtained from :meth:`CheckpointStore.open`, which has verified the
    manifest's signature. ``read`` returns a file's bytes after checking size
    and sha256 against the manifest, wherever the bytes live (this
    checkpoint, an older one it reuses them from — whose manifest is verified
    first too — hot or cold tier).
    """

    def __init__(self, store: CheckpointStore, manifest: CheckpointManifest, tier: Tier) -> None:
        self.manifest = manifest
        self.tier = tier
        self._store = store
        self._holders: dict[str, tuple[CheckpointManifest, Tier]] = {}

    @property
    def location(self) -> str:
        return self._store.storage(self.tier).location(self.manifest.model, self.manifest.version)

    def names(self) -> list[str]:
        """Names of the files of this checkpoint, in manifest order."""
        return [f.name for f in self.manifest.files]

    def read(self, name: str) -> bytes:
        """The verified bytes of file ``name``.

        Raises
        ------
        CheckpointNotFoundError
            No file of that name in the manifest.
        CheckpointCorruptError
            The bytes are missing or their size or sha256 differ from the manifest.
        """
        return bytes(self._read(name, buffer=False))

    def read_buffer(self, name: str) -> bytearray:
        """Like :meth:`read`, in a fresh writable buffer the caller owns.

        For decoders that view the bytes in place (tensors over the buffer)
        instead of copying them out; raises what :meth:`read` raises.
        """
        data = self._read(name, buffer=True)
        return data if isinstance(data, bytearray) else bytearray(data)

    def _read(self, name: str, *, buffer: bool) -> bytes | bytearray:
        m = self.manifest
        entry = m.file(name)
        if entry is None:
            raise CheckpointNotFoundError(
                f"no file {name!r} in checkpoint", model=m.model, version=m.version
            )
        if entry.ref_version is None:
            return self._store._read_verified(
                m.model, m.version, self.tier, entry.name, entry, buffer=buffer
            )
        if entry.ref_version not in self._holders:
            self._holders[entry.ref_version] = self._store._verified_manifest(
                m.model, entry.ref_version
            )
        holder, tier = self._holders[entry.ref_version]
        stored = next(
            (f for f in holder.files if f.sha256 == entry.sha256 and not f.ref_version), None
        )
        if stored is None:
            raise CheckpointCorruptError(
                f"referenced checkpoint holds no file with the sha256 of {name!r}",
                model=m.model,
                version=m.version,
                ref_version=entry.ref_version,
                expected_sha256=entry.sha256,
            )
        return self._store._read_verified(
            m.model, holder.version, tier, stored.name, entry, buffer=buffer
        )

    def verify(self) -> None:
        """Read and check every file; raises :class:`CheckpointCorruptError` on a bad one."""
        for name in self.names():
            self.read(name)


class CheckpointStore:
    """Atomic, verified, catalogued checkpoints of many models.

    Thread-safe per object: commits, GC and tier moves of one store object
    are serialised by a lock; version assignment is also locked across
    processes on the hot tier.

    With ``read_only`` the store never creates a directory, the catalog file
    or anything else: the tiers refuse writes (:class:`ReadOnlyStorage`) and
    the catalog lives in memory. Processes open it through
    :func:`services.checkpoints.opener.open_store`.
    """

    def __init__(
        self,
        config: StoreConfig,
        *,
        references: ReferenceSource | None = None,
        retention: RetentionPolicy | None = None,
        tiering: TierPolicy | None = None,
        read_only: bool = False,
    ) -> None:
        self.config = config
        self.read_only = read_only
        self.hot: CheckpointStorage = LocalStorage(config.root, fsync=config.fsync)
        self.cold: CheckpointStorage | None = None
        if config.cold_url:
            try:
                self.cold = open_storage(config.cold_url, fsync=config.fsync)
            except (ValueError, ImportError, OSError) as exc:
                raise ConfigError(
                    f"cannot open the cold tier: {exc}", url=redact_url(config.cold_url)
                ) from exc
        if read_only:
            # Every write is refused by the tiers, and the catalog is a private
            # in-memory copy synced from the manifests: nothing is created or changed.
            self.hot = ReadOnlyStorage(self.hot)
            self.cold = ReadOnlyStorage(self.cold) if self.cold is not None else None
            self.catalog = Catalog(":memory:")
        else:
            self.catalog = Catalog(config.catalog_file)
        self.references = references
        self.retention = (
            retention if retention is not None else policy_from_config(config, references)
        )
        self.tiering = tiering if tiering is not None else TierPolicy.from_config(config)
        self.pins = PinBook(self.hot, self.catalog)
        self.signer: Signer | None = signer_from_config(config)
        self.trusted: TrustedKeys = trusted_from_config(config, self.signer)
        self._lock = threading.RLock()
        self._synced: set[str] = set()

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def storage(self, tier: Tier) -> CheckpointStorage:
        if tier == "cold":
            if self.cold is None:
                raise CheckpointError("no cold tier configured (DRIFTLOOP_STORE_COLD_URL)")
            return self.cold
        return self.hot

    def _tiers(self) -> dict[Tier, CheckpointStorage]:
        tiers: dict[Tier, CheckpointStorage] = {"hot": self.hot}
        if self.cold is not None:
            tiers["cold"] = self.cold
        return tiers

    # -- writing -----------------------------------------------------------------------------

    def commit(
        self,
        model: str,
        files: Mapping[str, Payload],
        draft: ManifestDraft,
        *,
        finish: Finish | None = None,
    ) -> CheckpointManifest:
        """Write a new checkpoint of ``model`` and return its manifest.

        Assigns the next version id, writes ``files`` then ``manifest.json``
        atomically, records it in the catalog, then runs GC and tier moves
        when configured (their failures are logged, the commit stands).

        Each file is hashed while it is written (one pass over its bytes):
        the manifest's sha256 is always that of the bytes on disk, whatever
        the caller believes them to be. ``finish``, when given, is called
        after the files are written and before the manifest is, with the
        draft and the entries the store computed (name -> :class:`FileEntry`);
        it returns the draft to commit — the state layer fills in a state
        digest built from those hashes there instead of hashing the bytes a
        second time. An exception in ``finish`` aborts the save.

        Raises
        ------
        CheckpointError
            The write failed (nothing was committed), or ``draft`` refers to a
            checkpoint that does not exist.
        SchemaError
            A file name is not a safe relative path (nothing was written).
        ConfigError
            The store has no signing key (nothing was written).
        """
        signer = self.require_signer()
        layout.check_model(model)
        for name in files:
            try:
                check_file_name(name)
            except ValueError as exc:
                raise SchemaError(str(exc), field="files", model=model) from None
        with self._lock:
            self.sync(model)
            self._resolve_refs(model, files, draft)  # fail before anything is written
            version = self._reserve_version(model)
            pending = self.hot.begin(model, version)
            try:
                written = {
                    name: FileEntry(
                        name=name, sha256=pending.write(name, data), size=payload_size(data)
                    )
                    for name, data in files.items()
                }
                if finish is not None:
                    draft = finish(draft, written)
                entries = list(written.values()) + self._resolve_refs(model, files, draft)
                fields = draft.model_dump(exclude={"file_refs"})
                manifest = CheckpointManifest(
                    model=model,
                    version=version,
                    label=make_label(
                        version, draft.step, draft.trigger, draft.metrics, draft.key_metric
                    ),
                    created_ts=now_ms(),
                    files=entries,
                    **fields,
                )
                manifest = signer.sign(manifest)
                pending.finalize(self._encode_signed(manifest))
            except BaseException as exc:
                pending.abort()
                if isinstance(exc, DriftloopError | KeyboardInterrupt | SystemExit):
                    raise
                raise CheckpointError(
                    f"checkpoint write failed: {exc}", model=model, version=version
                ) from exc
            self.catalog.upsert(manifest, tier="hot", location=self.hot.location(model, version))
            self._after_commit(model)
            return manifest

    def require_signer(self) -> Signer:
        """The signing key; a writer calls this at start-up to refuse to run without one.

        Raises
        ------
        ConfigError
            Neither ``DRIFTLOOP_STORE_SIGNING_KEY`` nor ``_SIGNING_KEY_FILE`` is set.
        """
        if self.signer is None:
            raise ConfigError(
                "no signing key: set DRIFTLOOP_STORE_SIGNING_KEY or "
                "DRIFTLOOP_STORE_SIGNING_KEY_FILE (a store without one can read, list and GC, "
                "but not commit)",
                root=str(self.config.root),
            )
        return self.signer

    def _encode_signed(self, manifest: CheckpointManifest) -> bytes:
        """``manifest.json`` bytes, checked to verify as read back (so no commit is unloadable)."""
        data = encode_manifest(manifest)
        self.trusted.verify(
            decode_manifest(data, model=manifest.model, version=manifest.version),
            model=manifest.model,
            version=manifest.version,
        )
        return data

    def _after_commit(self, model: str) -> None:
        try:
            if self.config.gc_after_commit:
                self.gc(model)
            if self.tiering is not None and self.cold is not None:
                self.move_tiers(model)
        except Exception:
            log.exception("retention/tiering after commit failed (model=%s)", model)

    def _resolve_refs(
        self, model: str, files: Mapping[str, Payload], draft: ManifestDraft
    ) -> list[FileEntry]:
        for dep in (draft.base_version, draft.parent_version if draft.kind == "delta" else None):
            if dep is not None and self.catalog.get(model, dep) is None:
                raise CheckpointNotFoundError(
                    "delta depends on a missing checkpoint", model=model, version=dep
                )
        resolved: list[FileEntry] = []
        for name, ref in draft.file_refs.items():
            if name in files:
                raise CheckpointError(f"file {name!r} is both written and referenced", model=model)
            assert ref.ref_version is not None  # noqa: S101 - narrows a type that validation guarantees; guards no input
            holder, _ = self._manifest(model, ref.ref_version)
            found = next((f for f in holder.files if f.sha256 == ref.sha256), None)
            if found is None or found.size != ref.size:
                raise CheckpointNotFoundError(
                    f"referenced checkpoint holds no file with the sha256 of {name!r}",
                    model=model,
                    version=ref.ref_version,
                )
            resolved.append(
                FileEntry(
                    name=name,
                    sha256=ref.sha256,
                    size=ref.size,
                    ref_version=found.ref_version or holder.version,
                )
            )
        return resolved

    def _raise_high_water(self, model: str, seq: int) -> None:
        """Make sure ``.seq`` is at least ``seq`` before a directory with that seq is removed."""
        with self.hot.lock(model):
            raw = self.hot.read_meta(model, ".seq")
            high = int(raw) if raw is not None and raw.strip().isdigit() else 0
            if seq > high:
                self.hot.write_meta(model, ".seq", str(seq).encode())

    def _reserve_version(self, model: str) -> str:
        """The next version id, recorded durably before anything is written (never reused)."""
        with self.hot.lock(model):
            high = 0
            raw = self.hot.read_meta(model, ".seq")
            if raw is not None and raw.strip().isdigit():
                high = int(raw)
            for storage in self._tiers().values():
                for name in storage.entries(model):
                    high = max(high, layout.parse_seq(model, name) or 0)
            for record in self.catalog.query(model, include_deleting=True)[-1:]:
                high = max(high, record.seq)
            self.hot.write_meta(model, ".seq", str(high + 1).encode())
            return layout.version_id(model, high + 1)

    # -- reading -----------------------------------------------------------------------------

    def open(self, model: str, version: str | None = None) -> CheckpointReader:
        """A verified reader for ``version`` (None: the newest committed checkpoint).

        The manifest's signature is verified before the reader exists, so no
        state file of a checkpoint a trusted key did not sign is ever read.

        Raises
        ------
        CheckpointNotFoundError
            No such committed checkpoint (or its manifest does not validate).
        CheckpointSignatureError
            The manifest is unsigned, signed by an untrusted key, wrongly
            signed, or names another checkpoint (``reason`` says which). With
            ``version=None`` this is about the newest checkpoint; no older one
            is tried.
        """
        layout.check_model(model)
        self.sync(model)
        if version is not None:
            manifest, tier = self._verified_manifest(model, version)
            return CheckpointReader(self, manifest, tier)
        for record in reversed(self.catalog.query(model)):
            try:
                manifest, tier = self._verified_manifest(model, record.version)
            except CheckpointNotFoundError:
                continue
            return CheckpointReader(self, manifest, tier)
        raise CheckpointNotFoundError("no committed checkpoint", model=model)

    def manifest(self, model: str, version: str) -> CheckpointManifest:
        """The manifest of a committed version, not verified: for listing and display only.

        Never base a read of state on it; :meth:`open` verifies.
        """
        layout.check_model(model)
        self.sync(model)
        return self._manifest(model, version)[0]

    def manifests(self, model: str) -> list[CheckpointManifest]:
        """Manifests of the committed checkpoints of ``model``, oldest first.

        Not verified (listing only): what training resumes from goes through
        :meth:`open` or :meth:`latest`.
        """
        self.sync(model)
        out = []
        for record in self.catalog.query(model):
            try:
                out.append(self._manifest(model, record.version)[0])
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
            self.sync(m, deep=deep)
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
        self.sync(model)
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
        names = set(self.catalog.models())
        for storage in self._tiers().values():
            names.update(storage.models())
        return sorted(names)

    def _manifest(self, model: str, version: str) -> tuple[CheckpointManifest, Tier]:
        """The validated manifest of a committed version and the tier it was read from."""
        record = self.catalog.get(model, version)
        if record is None or record.status != "committed":
            raise CheckpointNotFoundError("no committed checkpoint", model=model, version=version)
        order: list[Tier] = [record.tier] + [t for t in self._tiers() if t != record.tier]
        for tier in order:
            raw = self.storage(tier).read_manifest(model, version)
            if raw is None:
                continue
            try:
                return decode_manifest(raw, model=model, version=version), tier
            except CheckpointError as exc:
                raise CheckpointNotFoundError(
                    f"manifest does not validate: {exc}", model=model, version=version
                ) from None
        raise CheckpointNotFoundError("checkpoint has no manifest", model=model, version=version)

    def _verified_manifest(self, model: str, version: str) -> tuple[CheckpointManifest, Tier]:
        """:meth:`_manifest`, then its signature and identity checked (see :meth:`open`)."""
        manifest, tier = self._manifest(model, version)
        self.trusted.verify(
            manifest,
            model=model,
            version=version,
            path=self.storage(tier).location(model, version),
        )
        return manifest, tier

    def _read_verified(
        self,
        model: str,
        version: str,
        tier: Tier,
        stored_name: str,
        entry: FileEntry,
        *,
        buffer: bool = False,
    ) -> bytes | bytearray:
        order: list[Tier] = [tier] + [t for t in self._tiers() if t != tier]
        path = f"{self.storage(tier).location(model, version)}/{stored_name}"
        data: bytes | bytearray | None = None
        for t in order:
            storage = self.storage(t)
            try:
                if buffer:
                    data = storage.read_buffer(model, version, stored_name)
                else:
                    data = storage.read_file(model, version, stored_name)
            except (FileNotFoundError, NotADirectoryError):
                continue
            path = f"{self.storage(t).location(model, version)}/{stored_name}"
            break
        if data is None:
            raise CheckpointCorruptError(
                "file listed in the manifest is missing",
                model=model,
                version=version,
                path=path,
                expected_sha256=entry.sha256,
                actual_sha256="missing",
            )
        actual = hashlib.sha256(data).hexdigest()
        if actual != entry.sha256 or len(data) != entry.size:
            raise CheckpointCorruptError(
                "file does not match its manifest",
                model=model,
                version=version,
                path=path,
                expected_sha256=entry.sha256,
                actual_sha256=actual,
                expected_size=entry.size,
                actual_size=len(data),
            )
        return data

    # -- catalog upkeep ------------------------------------------------------------------------

    def sync(self, model: str, *, deep: bool = False) -> None:
        """Bring the catalog rows of ``model`` in line with the committed manifests.

        Done once per store object per model (and by GC and reindex); ``deep``
        re-reads every manifest instead of trusting rows that match a directory.
        """
        if model in self._synced and not deep:
            return
        with self._lock:
            scan = scan_model(model, self._tiers(), self.catalog, deep=deep)
            with self.catalog.transaction() as db:
                for version in scan.stale_rows:
                    db.execute(
                        "DELETE FROM checkpoints WHERE model=? AND version=?", (model, version)
                    )
                for manifest, tier in scan.upserts:
                    self.catalog.upsert(
                        manifest,
                        tier=tier,
                        location=self.storage(tier).location(model, manifest.version),
                        db=db,
                    )
                self.catalog.replace_pins(model, self.pins.read(model), db=db)
            self._synced.add(model)

    def invalid(self, model: str) -> list[Leftover]:
        """Directories of ``model`` that are not committed checkpoints.

        Leftovers of interrupted work (GC removes them) and version
        directories with a corrupt manifest (GC quarantines them).
        """
        scan = scan_model(model, self._tiers(), self.catalog, deep=True)
        return scan.leftovers + scan.corrupt

    def quarantined(self, model: str | None = None) -> list[Quarantined]:
        """Quarantined directories of one model or all, with the reason each was moved."""
        found: list[Quarantined] = []
        for m in [model] if model is not None else self.models():
            for tier, storage in self._tiers().items():
                for name, note in storage.quarantined(m):
                    facts: dict[str, object] = {}
                    with contextlib.suppress(orjson.JSONDecodeError, TypeError):
                        loaded = orjson.loads(note or b"")
                        facts = loaded if isinstance(loaded, dict) else {}
                    ts = facts.get("quarantined_ts")
                    found.append(
                        Quarantined(
                            m,
                            tier,
                            name,
                            str(facts.get("reason", "no note (reason unknown)")),
                            ts if isinstance(ts, int) else None,
                        )
                    )
        return found

    def purge_quarantine(
        self, model: str | None = None, *, dry_run: bool = False
    ) -> list[Quarantined]:
        """Delete quarantined directories for good (only ever on request); returns them."""
        with self._lock:
            found = self.quarantined(model)
            if not dry_run:
                for q in found:
                    self.storage(q.tier).purge_quarantined(q.model, q.name)
            return found

    def reindex(self, progress: Progress | None = None) -> int:
        """Rebuild the catalog from the manifests; returns the number of checkpoints found."""
        with self._lock:
            models = self.models()
            with self.catalog.transaction() as db:
                db.execute("DELETE FROM checkpoints")
                db.execute("DELETE FROM pins")
            self._synced.clear()
            for i, model in enumerate(models, start=1):
                self.sync(model, deep=True)
                if progress is not None:
                    progress(i, len(models))
            return len(self.catalog.query(None))

    # -- signing ---------------------------------------------------------------------------

    def unsigned(self, model: str | None = None) -> list[tuple[str, str]]:
        """``(model, version)`` of every committed checkpoint whose manifest has no signature."""
        found = []
        for m in [model] if model is not None else self.models():
            for manifest in self.manifests(m):
                if manifest.signature is None:
                    found.append((m, manifest.version))
        return found

    def adopt(self, model: str | None = None, progress: Progress | None = None) -> list[str]:
        """Sign every unsigned committed manifest with this store's key; returns their versions.

        The explicit operator act that makes a store written before signing
        existed loadable again (``driftloop checkpoints sign --adopt``): it
        vouches for the checkpoints as they are now, so run it only on a store
        you trust. A version whose files do not match its manifest is not
        signed (it is logged and left for ``checkpoints verify`` to report);
        manifests already signed, by whatever key, are left alone. Each
        manifest is replaced in one step in the tier the catalog reads it from.

        Raises
        ------
        ConfigError
            The store has no signing key.
        """
        signer = self.require_signer()
        signed: list[str] = []
        with self._lock:
            todo = self.unsigned(model)
            for i, (m, version) in enumerate(todo, start=1):
                if self._adopt_one(signer, m, version):
                    signed.append(version)
                if progress is not None:
                    progress(i, len(todo))
        return signed

    def _adopt_one(self, signer: Signer, model: str, version: str) -> bool:
        try:
            manifest, tier = self._manifest(model, version)
            # Oldest first: the older checkpoints it reuses files from are signed already.
            CheckpointReader(self, manifest, tier).verify()
            data = self._encode_signed(signer.sign(manifest))
            self.storage(tier).replace_manifest(model, version, data)
        except (CheckpointError, FileNotFoundError) as exc:
            log.warning("not signing %s/%s: %s", model, version, exc)
            return False
        return True

    # -- pins ------------------------------------------------------------------------------

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

    # -- lifecycle --------------------------------------------------------------------------

    def gc(self, model: str | None = None, *, dry_run: bool = False) -> list[GcPlan]:
        """Apply retention, remove leftovers and quarantine corrupt versions; returns the plans.

        Quarantined data is never deleted here (see :meth:`purge_quarantine`).
        """
        plans = []
        with self._lock:
            for m in [model] if model is not None else self.models():
                self.sync(m, deep=True)
                scan = scan_model(m, self._tiers(), self.catalog, deep=False)
                leftovers, damaged = protect(scan.leftovers, self.pins.read(m), self.references, m)
                p = plan(
                    m,
                    self.catalog.query(m),
                    self.retention,
                    now_ms=now_ms(),
                    references=self.references,
                    history_depth=self.config.rollback_depth,
                    leftovers=leftovers,
                    quarantine=scan.corrupt + damaged,
                )
                plans.append(p)
                if not dry_run:
                    self._execute(p)
        return plans

    def _execute(self, p: GcPlan) -> None:
        seqs = [r.seq for r in p.delete] + [
            layout.parse_seq(p.model, x.name) or 0 for x in p.leftovers + p.quarantine
        ]
        if seqs:
            self._raise_high_water(p.model, max(seqs))
        tiers = self._tiers()
        for record in p.delete:
            if record.tier not in tiers:
                continue  # this store was not given that tier: leave its copy alone
            self.catalog.set_status(p.model, record.version, "deleting")
            for storage in self._tiers().values():
                storage.remove_manifest(p.model, record.version)
            for storage in self._tiers().values():
                storage.remove_entry(p.model, record.version)
            self.catalog.remove(p.model, record.version)
        for corrupt in p.quarantine:
            note = {"reason": corrupt.reason, "version": corrupt.name, "quarantined_ts": now_ms()}
            moved = self.storage(corrupt.tier).quarantine(p.model, corrupt.name, orjson.dumps(note))
            log.warning(
                "quarantined %s/%s (%s): %s; delete it with `driftloop checkpoints gc "
                "--purge-quarantine`",
                p.model,
                moved,
                corrupt.tier,
                corrupt.reason,
            )
        for leftover in p.leftovers:
            storage = self.storage(leftover.tier)
            storage.remove_manifest(p.model, leftover.name)
            storage.remove_entry(p.model, leftover.name)

    def move_tiers(self, model: str | None = None, progress: Progress | None = None) -> list[str]:
        """Move checkpoints the tier policy selects to the cold tier; returns their versions."""
        if self.cold is None or self.tiering is None:
            return []
        moved: list[str] = []
        with self._lock:
            for m in [model] if model is not None else self.models():
                self.sync(m)
                todo = self.tiering.to_move(self.catalog.query(m), now_ms())
                for i, record in enumerate(todo, start=1):
                    move_to_cold(record, self.hot, self.cold, self.catalog)
                    moved.append(record.version)
                    if progress is not None:
                        progress(i, len(todo))
        return moved
