"""Which versions may serve: :class:`StoreVersionCheck`, the pointer's check against the store.

A version can be made live, canary or shadow only when the store's reader
verifies it (:meth:`services.checkpoints.reader.CheckpointReader.verify`): it
is a committed checkpoint of the model, not quarantined, its manifest's
signature verifies against a trusted key, every file it reads (its own and
those it reuses from older checkpoints) has its recorded size and sha256,
and every checkpoint it depends on (delta parent and base, holders of reused
files) passes the same checks. Give it the reader of a store opened
read-only (``open_store(..., read_only=True).reader`` or
:func:`services.checkpoints.opener.open_reader`).
"""

from __future__ import annotations

from typing import Protocol

from schemas.errors import CheckpointError
from schemas.manifest import CheckpointManifest
from services.pointer.base import VersionRefusedError


class Verifier(Protocol):
    """What the check needs of the store: :class:`~services.checkpoints.reader.CheckpointReader`."""

    def verify(self, model: str, version: str, *, deep: bool = False) -> CheckpointManifest: ...


class StoreVersionCheck:
    """A :class:`~services.pointer.base.VersionCheck` reading one checkpoint store."""

    def __init__(self, reader: Verifier) -> None:
        self.reader = reader

    def check(self, model: str, version: str) -> None:
        try:
            self.reader.verify(model, version)
        except CheckpointError as exc:
            raise VersionRefusedError(
                f"the version cannot serve: {exc}", model=model, version=version
            ) from None
