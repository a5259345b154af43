"""The commit path: state files, then the signed manifest last, then the catalog row.

:class:`CheckpointWriter` is the only code that creates checkpoints (and,
on an operator's request, signs manifests written before signing existed:
:meth:`CheckpointWriter.adopt`). It writes through the hot tier's storage
seam, takes version ids from :mod:`.sequence`, signs every manifest with the
store's key (a writer without one refuses to commit) and checks the signed
bytes verify as read back, so no commit is unloadable. What a draft reuses
from older checkpoints is looked up through the
:class:`~services.checkpoints.reader.CheckpointReader`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from schemas.errors import (
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
from services.checkpoints.catalog import Catalog
from services.checkpoints.files import CheckpointFiles
from services.checkpoints.index import CatalogIndex, Progress
from services.checkpoints.reader import CheckpointReader
from services.checkpoints.sequence import reserve_version
from services.checkpoints.signing import Signer, TrustedKeys
from services.checkpoints.storage import CheckpointStorage, Payload, payload_size

log = logging.getLogger(__name__)

#: Completes a draft once the files are written, given the entries the writer computed.
Finish = Callable[[ManifestDraft, Mapping[str, FileEntry]], ManifestDraft]
#: Called with the model after each commit (retention, tier moves); its failures are the caller's.
AfterCommit = Callable[[str], None]


class CheckpointWriter:
    """Writes new checkpoints into the hot tier and records them in the catalog.

    Parameters
    ----------
    hot
        The tier new checkpoints are written to.
    index
        The catalog, kept in line with the manifests (version ids also
        account for its rows).
    reader
        Reads the manifests a draft references (must see the same tiers).
    signer, trusted
        The key every manifest is signed with (None: commits are refused)
        and the keys a signed manifest must verify against.
    lock
        Serialises commits with the store's GC and tier moves.
    root
        The store root, for messages.
    after_commit
        Called with the model after each commit, under the lock.
    """

    def __init__(
        self,
        hot: CheckpointStorage,
        *,
        index: CatalogIndex,
        reader: CheckpointReader,
        signer: Signer | None,
        trusted: TrustedKeys,
        lock: threading.RLock,
        root: Path | str,
        after_commit: AfterCommit | None = None,
    ) -> None:
        self.hot = hot
        self.index = index
        self.reader = reader
        self.signer = signer
        self.trusted = trusted
        self.root = str(root)
        self._lock = lock
        self._after_commit = after_commit

    @property
    def catalog(self) -> Catalog:
        return self.index.catalog

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
        atomically, records it in the catalog, then calls ``after_commit``
        (the store's GC and tier moves; their failures are logged there, the
        commit stands).

        Each file is hashed while it is written (one pass over its bytes):
        the manifest's sha256 is always that of the bytes on disk, whatever
        the caller believes them to be. ``finish``, when given, is called
        after the files are written and before the manifest is, with the
        draft and the entries the writer computed (name -> :class:`FileEntry`);
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
            The writer has no signing key (nothing was written).
        """
        signer = self.require_signer()
        layout.check_model(model)
        for name in files:
            try:
                check_file_name(name)
            except ValueError as exc:
                raise SchemaError(str(exc), field="files", model=model) from None
        with self._lock:
            self.index.sync(model)
            self._resolve_refs(model, files, draft)  # fail before anything is written
            version = reserve_version(self.hot, self.reader.tiers(), self.catalog, model)
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
                    created_ts=layout.now_ms(),
                    files=entries,
                    **fields,
                )
                manifest = signer.sign(manifest)
                pending.finalize(self.encode_signed(manifest))
            except BaseException as exc:
                pending.abort()
                if isinstance(exc, DriftloopError | KeyboardInterrupt | SystemExit):
                    raise
                raise CheckpointError(
                    f"checkpoint write failed: {exc}", model=model, version=version
                ) from exc
            self.catalog.upsert(manifest, tier="hot", location=self.hot.location(model, version))
            if self._after_commit is not None:
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
                root=self.root,
            )
        return self.signer

    def encode_signed(self, manifest: CheckpointManifest) -> bytes:
        """``manifest.json`` bytes, checked to verify as read back (so no commit is unloadable)."""
        data = encode_manifest(manifest)
        self.trusted.verify(
            decode_manifest(data, model=manifest.model, version=manifest.version),
            model=manifest.model,
            version=manifest.version,
        )
        return data

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
            holder, _ = self.reader.unverified_manifest(model, ref.ref_version)
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

    # -- signing what was written before signing existed ------------------------------------

    def adopt(self, todo: list[tuple[str, str]], progress: Progress | None = None) -> list[str]:
        """Sign the unsigned committed manifests ``todo`` (model, version), oldest first.

        Returns the versions signed. The explicit operator act that makes a
        store written before signing existed loadable again (``driftloop
        checkpoints sign --adopt``): it vouches for the checkpoints as they
        are now, so run it only on a store you trust. A version whose files do
        not match its manifest is not signed (it is logged and left for
        ``checkpoints verify`` to report). Each manifest is replaced in one
        step in the tier it is read from.

        Raises
        ------
        ConfigError
            The writer has no signing key.
        """
        signer = self.require_signer()
        signed: list[str] = []
        with self._lock:
            for i, (m, version) in enumerate(todo, start=1):
                if self._adopt_one(signer, m, version):
                    signed.append(version)
                if progress is not None:
                    progress(i, len(todo))
        return signed

    def _adopt_one(self, signer: Signer, model: str, version: str) -> bool:
        try:
            manifest, tier = self.reader.unverified_manifest(model, version)
            # Oldest first: the older checkpoints it reuses files from are signed already.
            CheckpointFiles(self.reader, manifest, tier).verify()
            data = self.encode_signed(signer.sign(manifest))
            self.reader.storage(tier).replace_manifest(model, version, data)
        except (CheckpointError, FileNotFoundError) as exc:
            log.warning("not signing %s/%s: %s", model, version, exc)
            return False
        return True
