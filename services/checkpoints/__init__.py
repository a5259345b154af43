"""The checkpoint store: atomic, verified, catalogued checkpoints of model state.

The storage layer (this package's modules outside ``state/``) stores named
files plus a manifest and knows nothing about torch or river; the state layer
(``state/``, ``checkpointer.py``) encodes model state into those files and
writes through :class:`CheckpointStore` only; a process that only reads
opens a :class:`CheckpointReader` (``opener.open_reader``).

Modules: ``layout`` (names on disk, version ids), ``storage`` (the seam:
local directory, fsspec URL), ``memory_storage`` (its in-memory twin),
``readonly`` (a tier that refuses writes), ``catalog`` (SQLite index, all the
SQL), ``scan`` (catalog vs tiers), ``index`` (the catalog synced from the
manifests), ``sequence`` (version ids), ``pins``, ``retention`` (policies),
``gc``, ``tiering``, ``signing`` (Ed25519 manifest signatures), ``reader``
(verified reads), ``writer`` (the commit path), ``store`` (the facade
composing them), ``opener`` (how processes open the store or a reader).
"""

from __future__ import annotations

from services.checkpoints.catalog import Catalog, CheckpointRecord
from services.checkpoints.config import StoreConfig
from services.checkpoints.files import CheckpointFiles
from services.checkpoints.gc import GcPlan, Leftover, Quarantined
from services.checkpoints.memory_storage import MemoryStorage
from services.checkpoints.reader import CheckpointReader
from services.checkpoints.retention import (
    InMemoryReferences,
    KeepAny,
    KeepBest,
    KeepLatest,
    KeepNewerThan,
    KeepOnePer,
    KeepPinned,
    KeepReferenced,
    ReferenceSource,
    RetentionPolicy,
    VersionReferences,
)
from services.checkpoints.signing import Signer, TrustedKeys, ensure_default_key
from services.checkpoints.storage import (
    CheckpointStorage,
    FsspecStorage,
    LocalStorage,
    PendingCheckpoint,
)
from services.checkpoints.store import CheckpointStore
from services.checkpoints.tiering import TierPolicy
from services.checkpoints.writer import CheckpointWriter

__all__ = [
    "Catalog",
    "CheckpointFiles",
    "CheckpointReader",
    "CheckpointRecord",
    "CheckpointStorage",
    "CheckpointStore",
    "CheckpointWriter",
    "FsspecStorage",
    "GcPlan",
    "InMemoryReferences",
    "KeepAny",
    "KeepBest",
    "KeepLatest",
    "KeepNewerThan",
    "KeepOnePer",
    "KeepPinned",
    "KeepReferenced",
    "Leftover",
    "LocalStorage",
    "MemoryStorage",
    "PendingCheckpoint",
    "Quarantined",
    "ReferenceSource",
    "RetentionPolicy",
    "Signer",
    "StoreConfig",
    "TierPolicy",
    "TrustedKeys",
    "VersionReferences",
    "ensure_default_key",
]
