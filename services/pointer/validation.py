"""Which versions may serve: :class:`StoreVersionCheck`, the pointer's check against the store.

A version can be made live, canary or shadow only when it is a committed
checkpoint of the model, its manifest's signature verifies against a trusted
key, every file it reads (its own and those it reuses from older
checkpoints) has its recorded size and sha256, every checkpoint it depends
on (delta parent and base, holders of reused files) passes the same checks,
and no quarantined directory holds it. It uses only the store's public API
(:meth:`~services.checkpoints.store.CheckpointStore.open`,
:meth:`~services.checkpoints.store.CheckpointReader.verify`,
:meth:`~services.checkpoints.store.CheckpointStore.quarantined`); open the
store read-only with :func:`services.checkpoints.opener.open_store`.
"""

from __future__ import annotations

from schemas.errors import CheckpointError
from services.checkpoints.health import quarantined_version
from services.checkpoints.store import CheckpointStore
from services.pointer.base import VersionRefusedError


class StoreVersionCheck:
    """A :class:`~services.pointer.base.VersionCheck` reading one checkpoint store."""

    def __init__(self, store: CheckpointStore) -> None:
        self.store = store

    def check(self, model: str, version: str) -> None:
        for q in self.store.quarantined(model):
            if quarantined_version(model, q.name) == version:
                raise VersionRefusedError(
                    f"version is quarantined: {q.reason}", model=model, version=version
                )
        seen: set[str] = set()
        todo = [version]
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            try:
                reader = self.store.open(model, current)
                reader.verify()
            except CheckpointError as exc:
                what = "the version" if current == version else f"{current}, which it depends on,"
                raise VersionRefusedError(
                    f"{what} cannot serve: {exc}", model=model, version=version
                ) from None
            todo.extend(reader.manifest.dependencies())
