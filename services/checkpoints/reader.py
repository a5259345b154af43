"""Read-only access to committed checkpoints: verified manifests and state files.

:class:`CheckpointReader` reads through injected storage (one
:class:`~services.checkpoints.storage.CheckpointStorage` per tier) and never
writes anything: it has no catalog, creates no directory, migrates and
repairs nothing. Model servers and the CLI's read commands open it with
:func:`services.checkpoints.opener.open_reader` (every write of its tiers is
then refused as well, see :class:`~services.checkpoints.readonly.ReadOnlyStorage`);
a writing :class:`~services.checkpoints.store.CheckpointStore` composes one
over its own tiers and catalog.

Which versions exist is asked of a
:class:`~services.checkpoints.index.VersionIndex`: by default
:class:`~services.checkpoints.index.TierIndex`, which reads the manifests in
the tiers (the truth) each time; the store passes its catalog-backed
:class:`~services.checkpoints.index.CatalogIndex`.

Authenticity before deserialization: :meth:`CheckpointReader.open` — the only
way to state bytes — verifies the manifest's signature, and that it names the
model and version opened, before a :class:`~services.checkpoints.files.CheckpointFiles`
exists; that verifies the manifest of every older checkpoint it reads reused files from
the same way, and checks each file's size and sha256 against the manifest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from schemas.errors import CheckpointError, CheckpointNotFoundError, SchemaError
from schemas.manifest import CheckpointManifest, decode_manifest
from services.checkpoints import layout
from services.checkpoints.catalog import Tier
from services.checkpoints.files import CheckpointFiles
from services.checkpoints.index import TierIndex, VersionIndex
from services.checkpoints.scan import Quarantined, quarantined_in, quarantined_version
from services.checkpoints.signing import TrustedKeys
from services.checkpoints.storage import CheckpointStorage

if TYPE_CHECKING:
    from services.checkpoints.checkpointer import LoadedCheckpoint, StateAdapter


class CheckpointReader:
    """Verified, read-only access to the checkpoints of every model in a store.

    Parameters
    ----------
    hot, cold
        The tiers to read (cold optional). Nothing is ever written to them.
    trusted
        The public keys whose manifest signatures are accepted.
    index
        Where committed versions are looked up; default
        :class:`~services.checkpoints.index.TierIndex` (the manifests themselves).
    """

    def __init__(
        self,
        hot: CheckpointStorage,
        cold: CheckpointStorage | None = None,
        *,
        trusted: TrustedKeys,
        index: VersionIndex | None = None,
    ) -> None:
        self.hot = hot
        self.cold = cold
        self.trusted = trusted
        self.index: VersionIndex = index if index is not None else TierIndex(self.tiers())

    def close(self) -> None:
        """Nothing to release (no catalog, no open file); for ``with`` symmetry with the store."""

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def tiers(self) -> dict[Tier, CheckpointStorage]:
        """The storage of each tier, hot first."""
        tiers: dict[Tier, CheckpointStorage] = {"hot": self.hot}
        if self.cold is not None:
            tiers["cold"] = self.cold
        return tiers

    def storage(self, tier: Tier) -> CheckpointStorage:
        if tier == "cold":
            if self.cold is None:
                raise CheckpointError("no cold tier configured (DRIFTLOOP_STORE_COLD_URL)")
            return self.cold
        return self.hot

    # -- listing -------------------------------------------------------------------------------

    def models(self) -> list[str]:
        """Models with a directory in any tier."""
        names: set[str] = set()
        for storage in self.tiers().values():
            names.update(storage.models())
        return sorted(names)

    def versions(self, model: str) -> list[str]:
        """The committed versions of ``model``, oldest first (not verified: listing only)."""
        layout.check_model(model)
        return self.index.versions(model)

    def quarantined(self, model: str) -> list[Quarantined]:
        """Quarantined directories of ``model``, with the reason each was moved."""
        layout.check_model(model)
        return quarantined_in(model, self.tiers())

    def is_quarantined(self, model: str, version: str) -> bool:
        """Whether a copy of ``version`` was moved to quarantine (by GC, for damage)."""
        return any(quarantined_version(model, q.name) == version for q in self.quarantined(model))

    # -- manifests -----------------------------------------------------------------------------

    def unverified_manifest(self, model: str, version: str) -> tuple[CheckpointManifest, Tier]:
        """The validated manifest of a committed version and the tier it was read from.

        Its signature is not checked: for listing and display only; never
        base a read of state on it (:meth:`open` verifies).

        Raises
        ------
        CheckpointNotFoundError
            ``version`` is not a version id of ``model``, no such version
            is committed, or its manifest does not validate.
        """
        layout.check_model(model)
        if layout.parse_seq(model, version) is None:  # never build a path from it
            raise CheckpointNotFoundError(
                f"not a version id of {model}", model=model, version=version
            )
        first = self.index.locate(model, version)
        order: list[Tier] = [first] + [t for t in self.tiers() if t != first]
        for tier in order:
            raw = self.storage(tier).read_manifest(model, version)
            if raw is None:
                continue
            try:
                return decode_manifest(raw, model=model, version=version), tier
            except (CheckpointError, SchemaError) as exc:
                raise CheckpointNotFoundError(
                    f"manifest does not validate: {exc}", model=model, version=version
                ) from None
        raise CheckpointNotFoundError("checkpoint has no manifest", model=model, version=version)

    def verified_manifest(self, model: str, version: str) -> tuple[CheckpointManifest, Tier]:
        """:meth:`unverified_manifest`, then its signature and identity checked.

        Raises what :meth:`open` raises.
        """
        manifest, tier = self.unverified_manifest(model, version)
        self.trusted.verify(
            manifest,
            model=model,
            version=version,
            path=self.storage(tier).location(model, version),
        )
        return manifest, tier

    def manifest(self, model: str, version: str) -> CheckpointManifest:
        """The verified manifest of ``version`` (signature and identity checked; no file read).

        Raises what :meth:`open` raises.
        """
        layout.check_model(model)
        return self.verified_manifest(model, version)[0]

    # -- state ---------------------------------------------------------------------------------

    def open(self, model: str, version: str | None = None) -> CheckpointFiles:
        """Verified access to the files of ``version`` (None: the newest committed checkpoint).

        The manifest's signature is verified before the files object exists,
        so no state file of a checkpoint a trusted key did not sign is ever read.

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
        if version is not None:
            manifest, tier = self.verified_manifest(model, version)
            return CheckpointFiles(self, manifest, tier)
        for newest in reversed(self.index.versions(model)):
            try:
                manifest, tier = self.verified_manifest(model, newest)
            except CheckpointNotFoundError:
                continue
            return CheckpointFiles(self, manifest, tier)
        raise CheckpointNotFoundError("no committed checkpoint", model=model)

    def verify(self, model: str, version: str, *, deep: bool = False) -> CheckpointManifest:
        """Check that ``version`` loads: signatures, every file's hash, every dependency.

        Verifies the manifest of ``version`` and of every checkpoint it
        depends on (a delta's parent chain and base, the holders of files it
        reuses), and reads every file of each, checking size and sha256.
        ``deep`` also rebuilds the state (delta rows applied) and compares the
        state digest recorded at save time. Returns the verified manifest.

        Raises
        ------
        CheckpointNotFoundError
            ``version`` (or a checkpoint it depends on) is not committed; the
            message says when it is quarantined, and why.
        CheckpointSignatureError
            A manifest does not verify (``reason``, ``path`` say which and where).
        CheckpointCorruptError
            A file is missing or differs from its manifest (``path``,
            ``expected_sha256``, ``actual_sha256``), or, with ``deep``, the
            rebuilt state does not match its digest.
        """
        try:
            top = self.open(model, version)
        except CheckpointNotFoundError:
            quarantined = [
                q for q in self.quarantined(model) if quarantined_version(model, q.name) == version
            ]
            if quarantined:
                q = quarantined[-1]
                raise CheckpointNotFoundError(
                    f"checkpoint is quarantined: {q.reason}",
                    model=model,
                    version=version,
                    quarantined=q.name,
                    tier=q.tier,
                ) from None
            raise
        todo, seen = [top], {version}
        while todo:
            files = todo.pop()
            for dep in sorted(files.manifest.dependencies() - seen):
                seen.add(dep)
                try:
                    todo.append(self.open(model, dep))
                except CheckpointNotFoundError as exc:
                    raise CheckpointNotFoundError(
                        f"depends on {dep}, which is not a committed checkpoint: {exc}",
                        model=model,
                        version=files.manifest.version,
                        dependency=dep,
                    ) from exc
            files.verify()
        if deep:
            from services.checkpoints.state.encoding import INDEX_NAME
            from services.checkpoints.state.reader import load_state

            if top.manifest.file(INDEX_NAME) is not None:  # written by the state layer
                load_state(self, model, version)
        return top.manifest

    def load(
        self,
        model: str,
        version: str | None = None,
        *,
        variant: str | None = None,
        verify_digest: bool = True,
    ) -> LoadedCheckpoint:
        """The verified state of ``version`` (None: the newest), as the checkpointer loads it.

        ``variant`` ``"int8"`` or ``"ema"`` loads that variant as the
        ``"model"`` group. Raises what :meth:`open` raises, and
        CheckpointCorruptError when the rebuilt state differs from its digest.
        """
        from services.checkpoints.checkpointer import LoadedCheckpoint
        from services.checkpoints.state.reader import load_state, load_variant

        if variant is not None:
            state, manifest = load_variant(self, model, version, variant)
        else:
            state, manifest, _ = load_state(self, model, version, verify=verify_digest)
        return LoadedCheckpoint(state, manifest)

    def restore(
        self, model: str, adapter: StateAdapter, version: str | None = None
    ) -> CheckpointManifest:
        """Load ``version`` and restore it into ``adapter``; returns its manifest."""
        loaded = self.load(model, version)
        adapter.restore(loaded.state)
        return loaded.manifest
