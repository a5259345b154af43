"""Hot and cold tiers: which checkpoints move to cold storage, and how.

The hot tier is a local directory, the cold tier any fsspec URL. A
:class:`TierPolicy` picks the hot checkpoints beyond the newest N or older
than an age; :func:`move_to_cold` copies one, verifies the copy, commits it
in cold (manifest last), records the new tier in the catalog and only then
deletes the hot copy. Killed at any point, both copies or one complete copy
remain; GC removes the duplicate the catalog does not point to.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from schemas.errors import CheckpointCorruptError, CheckpointError
from schemas.manifest import decode_manifest
from services.checkpoints.catalog import Catalog, CheckpointRecord
from services.checkpoints.config import StoreConfig
from services.checkpoints.retention import ReferenceSource
from services.checkpoints.storage import CheckpointStorage


@dataclass(frozen=True)
class TierPolicy:
    """Keep the newest ``keep_hot_newest`` hot and move anything older than ``max_hot_age_s``.

    A checkpoint moves when either rule says so; the newest checkpoint never moves,
    nor does a version the pointer references.
    """

    keep_hot_newest: int | None = None
    max_hot_age_s: float | None = None

    def to_move(
        self,
        checkpoints: Sequence[CheckpointRecord],
        now_ms: int,
        *,
        referenced: Collection[str] = (),
    ) -> list[CheckpointRecord]:
        """The hot checkpoints of one model to move to cold, oldest first.

        ``referenced`` (what the version pointer serves or may roll back to,
        :func:`referenced_versions`) stays hot whatever its age.
        """
        ordered = sorted(checkpoints, key=lambda c: c.seq)
        if not ordered:
            return []
        newest = ordered[-1].version
        move: list[CheckpointRecord] = []
        for i, c in enumerate(ordered):
            if c.tier != "hot" or c.version == newest or c.version in referenced:
                continue
            beyond = self.keep_hot_newest is not None and i < len(ordered) - self.keep_hot_newest
            old = self.max_hot_age_s is not None and c.created_ts < now_ms - int(
                self.max_hot_age_s * 1000
            )
            if beyond or old:
                move.append(c)
        return move

    @classmethod
    def from_config(cls, config: StoreConfig) -> TierPolicy | None:
        if not config.tiering_enabled:
            return None
        return cls(config.hot_keep_newest, config.hot_max_age_s)


def referenced_versions(source: ReferenceSource | None, model: str, depth: int) -> set[str]:
    """Live, canary, shadow and the ``depth`` newest rollback-history versions of ``model``.

    Raises what ``source`` raises: a pointer that cannot be read stops the
    tier move before anything moves.
    """
    if source is None:
        return set()
    refs = source.references(model)
    named = {refs.live, refs.canary, refs.shadow, *refs.history[:depth]}
    return {v for v in named if v is not None}


def move_to_cold(
    record: CheckpointRecord, hot: CheckpointStorage, cold: CheckpointStorage, catalog: Catalog
) -> None:
    """Copy one checkpoint hot -> cold, verify, commit in cold, repoint the catalog, delete hot."""
    model, version = record.model, record.version
    raw = hot.read_manifest(model, version)
    if raw is None:
        raise CheckpointError("no committed hot copy to move", model=model, version=version)
    manifest = decode_manifest(raw, model=model, version=version)
    if cold.read_manifest(model, version) != raw:
        pending = cold.begin(model, version)
        try:
            for entry in manifest.files:
                if entry.ref_version is not None:
                    continue
                data = hot.read_file(model, version, entry.name)
                _check(data, entry.sha256, entry.size, hot.location(model, version), entry.name)
                pending.write(entry.name, data)
            for entry in manifest.files:
                if entry.ref_version is None:
                    copy = pending.read(entry.name)
                    _check(
                        copy, entry.sha256, entry.size, cold.location(model, version), entry.name
                    )
            pending.finalize(raw)
        except BaseException:
            pending.abort()
            raise
    catalog.set_tier(model, version, "cold", cold.location(model, version))
    hot.remove_manifest(model, version)
    hot.remove_entry(model, version)


def _check(data: bytes, sha256: str, size: int, where: str, name: str) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256 or len(data) != size:
        raise CheckpointCorruptError(
            "file does not match its manifest",
            path=f"{where}/{name}",
            expected_sha256=sha256,
            actual_sha256=actual,
            expected_size=size,
            actual_size=len(data),
        )
