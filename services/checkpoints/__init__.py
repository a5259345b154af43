"""The checkpoint store: atomic, verified, catalogued checkpoints of model state.

The storage layer (this package's modules outside ``state/``) stores named
files plus a manifest and knows nothing about torch or river; the state layer
(``state/``, ``checkpointer.py``) encodes model state into those files and
writes through :class:`CheckpointStore` only.

Modules: ``layout`` (names on disk, version ids), ``storage`` (the seam:
local directory, fsspec URL), ``catalog`` (SQLite index), ``scan`` (catalog vs
tiers), ``pins``, ``retention`` (policies), ``gc``, ``tiering``, ``signing``
(Ed25519 manifest signatures), ``store``.
"""

from __future__ import annotations

from services.checkpoints.catalog import Catalog, CheckpointRecord
from services.checkpoints.config import StoreConfig
from services.checkpoints.gc import GcPlan, Leftover, Quarantined
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
from services.checkpoints.store import CheckpointReader, CheckpointStore
from services.checkpoints.tiering import TierPolicy

__all__ = [
    "Catalog",
    "CheckpointReader",
    "CheckpointRecord",
    "CheckpointStorage",
    "CheckpointStore",
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
