"""A storage tier that can only be read: what a read-only store opens.

:class:`ReadOnlyStorage` wraps any :class:`~services.checkpoints.storage.CheckpointStorage`
and passes reads through; every method that would create, write, move or
delete something raises :class:`~schemas.errors.CheckpointError` before it
touches the tier. A process that only reads (``driftloop checkpoints list``,
a model server) therefore cannot create, migrate or repair anything, whatever
code path it takes.
"""

from __future__ import annotations

import contextlib

from schemas.errors import CheckpointError
from services.checkpoints.storage import (
    CheckpointStorage,
    PendingCheckpoint,
    WritableBuffer,
    read_hashed,
)


class ReadOnlyStorage:
    """``storage`` with every write refused (a :class:`CheckpointStorage`)."""

    def __init__(self, storage: CheckpointStorage) -> None:
        self._storage = storage

    def _refuse(self, what: str, model: str) -> CheckpointError:
        return CheckpointError(
            f"the checkpoint store is open read-only: cannot {what}",
            model=model,
            path=self._storage.url,
        )

    # -- reads: passed through ------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self._storage.url

    def location(self, model: str, version: str) -> str:
        return self._storage.location(model, version)

    def read_file(self, model: str, version: str, name: str) -> bytes:
        return self._storage.read_file(model, version, name)

    def read_buffer(self, model: str, version: str, name: str) -> WritableBuffer:
        return self._storage.read_buffer(model, version, name)

    def read_buffer_hashed(self, model: str, version: str, name: str) -> tuple[WritableBuffer, str]:
        return read_hashed(self._storage, model, version, name)

    def read_manifest(self, model: str, version: str) -> bytes | None:
        return self._storage.read_manifest(model, version)

    def models(self) -> list[str]:
        return self._storage.models()

    def entries(self, model: str) -> list[str]:
        return self._storage.entries(model)

    def in_flight(self, model: str, name: str) -> bool:
        return self._storage.in_flight(model, name)

    def quarantined(self, model: str) -> list[tuple[str, bytes | None]]:
        return self._storage.quarantined(model)

    def stale_temp_files(self, model: str) -> list[str]:
        return self._storage.stale_temp_files(model)

    def read_meta(self, model: str, name: str) -> bytes | None:
        return self._storage.read_meta(model, name)

    # -- writes: refused ------------------------------------------------------------------------

    def begin(self, model: str, version: str) -> PendingCheckpoint:
        raise self._refuse(f"write checkpoint {version}", model)

    def replace_manifest(self, model: str, version: str, manifest: bytes) -> None:
        raise self._refuse(f"rewrite the manifest of {version}", model)

    def remove_manifest(self, model: str, version: str) -> None:
        raise self._refuse(f"delete checkpoint {version}", model)

    def remove_entry(self, model: str, name: str) -> None:
        raise self._refuse(f"delete {name}", model)

    def quarantine(self, model: str, name: str, note: bytes) -> str:
        raise self._refuse(f"quarantine {name}", model)

    def purge_quarantined(self, model: str, name: str) -> None:
        raise self._refuse(f"purge {name}", model)

    def write_meta(self, model: str, name: str, data: bytes) -> None:
        raise self._refuse(f"write {name}", model)

    def lock(self, model: str) -> contextlib.AbstractContextManager[None]:
        # Locks are taken only to assign versions or raise the high-water mark: writes.
        raise self._refuse("take the version lock", model)
