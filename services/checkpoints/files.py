"""The files of one committed checkpoint, every read checked against its verified manifest.

:class:`CheckpointFiles` is what :meth:`CheckpointReader.open
<services.checkpoints.reader.CheckpointReader.open>` (and the store's
``open``) returns once the manifest's signature has verified; the state layer
reads through it (:class:`~services.checkpoints.state.encoding.StateReader`).
:func:`read_verified` is the one place state bytes are read from storage:
the size and sha256 must match the manifest, whichever tier holds them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Protocol

from schemas.errors import CheckpointCorruptError, CheckpointNotFoundError
from schemas.manifest import CheckpointManifest, FileEntry
from services.checkpoints.catalog import Tier
from services.checkpoints.storage import CheckpointStorage, WritableBuffer, read_hashed


class ManifestSource(Protocol):
    """What :class:`CheckpointFiles` reads through (a :class:`CheckpointReader`)."""

    def tiers(self) -> dict[Tier, CheckpointStorage]: ...

    def storage(self, tier: Tier) -> CheckpointStorage: ...

    def verified_manifest(self, model: str, version: str) -> tuple[CheckpointManifest, Tier]: ...


class CheckpointFiles:
    """Read access to one committed checkpoint; every read is verified.

    Obtained from :meth:`CheckpointReader.open` (or the store's ``open``),
    which has verified the manifest's signature. ``read`` returns a file's
    bytes after checking size and sha256 against the manifest, wherever the
    bytes live (this checkpoint, an older one it reuses them from — whose
    manifest is verified first too — hot or cold tier).
    """

    def __init__(self, source: ManifestSource, manifest: CheckpointManifest, tier: Tier) -> None:
        self.manifest = manifest
        self.tier = tier
        self._source = source
        self._holders: dict[str, tuple[CheckpointManifest, Tier]] = {}

    @property
    def location(self) -> str:
        return self._source.storage(self.tier).location(self.manifest.model, self.manifest.version)

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

    def read_buffer(self, name: str) -> WritableBuffer:
        """Like :meth:`read`, in a fresh writable buffer the caller owns.

        For decoders that view the bytes in place (tensors over the buffer)
        instead of copying them out; raises what :meth:`read` raises.
        """
        data = self._read(name, buffer=True)
        return data if isinstance(data, bytearray | memoryview) else bytearray(data)

    def read_buffer_unhashed(self, name: str) -> WritableBuffer:
        """Like :meth:`read_buffer`, checking the size but not the sha256.

        Only for bytes a later check covers anyway: the base value of a tensor a
        load rebuilds from a delta chain, whose rebuilt bytes are hashed against
        the state digest (see :mod:`.state.reader`, which reads every file
        again with its hash checked when that fails, to name the damaged one).
        """
        data = self._read(name, buffer=True, hashed=False)
        return data if isinstance(data, bytearray | memoryview) else bytearray(data)

    def _read(self, name: str, *, buffer: bool, hashed: bool = True) -> bytes | WritableBuffer:
        m = self.manifest
        entry = m.file(name)
        if entry is None:
            raise CheckpointNotFoundError(
                f"no file {name!r} in checkpoint", model=m.model, version=m.version
            )
        if entry.ref_version is None:
            tiers = self._source.tiers()
            return read_verified(
                tiers,
                m.model,
                m.version,
                self.tier,
                entry.name,
                entry,
                buffer=buffer,
                hashed=hashed,
            )
        if entry.ref_version not in self._holders:
            self._holders[entry.ref_version] = self._source.verified_manifest(
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
        return read_verified(
            self._source.tiers(),
            m.model,
            holder.version,
            tier,
            stored.name,
            entry,
            buffer=buffer,
            hashed=hashed,
        )

    def verify(self) -> None:
        """Read and check every file; raises :class:`CheckpointCorruptError` on a bad one."""
        for name in self.names():
            self.read(name)


def read_verified(
    tiers: Mapping[Tier, CheckpointStorage],
    model: str,
    version: str,
    tier: Tier,
    stored_name: str,
    entry: FileEntry,
    *,
    buffer: bool = False,
    hashed: bool = True,
) -> bytes | WritableBuffer:
    """The bytes of ``stored_name`` of ``version`` checked against ``entry``.

    Read from ``tier`` first, then from the other tiers. ``hashed=False``
    (buffers only) checks the size alone, for bytes a later check covers.

    Raises
    ------
    CheckpointCorruptError
        The file is missing in every tier, or its size or sha256 differ.
    """
    order: list[Tier] = [tier] + [t for t in tiers if t != tier]
    path = f"{tiers[tier].location(model, version)}/{stored_name}"
    data: bytes | WritableBuffer | None = None
    actual: str | None = None
    for t in order:
        storage = tiers[t]
        try:
            if buffer and not hashed:
                data = storage.read_buffer(model, version, stored_name)
            elif buffer:  # hashed while read where the storage can (one pass over memory)
                data, actual = read_hashed(storage, model, version, stored_name)
            else:
                data = storage.read_file(model, version, stored_name)
        except (FileNotFoundError, NotADirectoryError):
            continue
        path = f"{tiers[t].location(model, version)}/{stored_name}"
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
    if not hashed and len(data) == entry.size:
        return data
    if actual is None:
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
