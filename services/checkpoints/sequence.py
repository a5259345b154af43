"""Version ids that are never reused: the per-model ``.seq`` high-water mark.

The writer reserves the next id (:func:`reserve_version`) before it writes a
checkpoint, and GC raises the mark (:func:`raise_high_water`) before it
removes a directory, both under the hot tier's per-model lock, so a version
id, once seen by anyone, is never handed out again (see :mod:`.layout`).
"""

from __future__ import annotations

from collections.abc import Mapping

from services.checkpoints import layout
from services.checkpoints.catalog import Catalog, Tier
from services.checkpoints.storage import CheckpointStorage

SEQ_FILE = ".seq"


def _high_water(hot: CheckpointStorage, model: str) -> int:
    raw = hot.read_meta(model, SEQ_FILE)
    return int(raw) if raw is not None and raw.strip().isdigit() else 0


def raise_high_water(hot: CheckpointStorage, model: str, seq: int) -> None:
    """Make sure ``.seq`` is at least ``seq`` before a directory with that seq is removed."""
    with hot.lock(model):
        if seq > _high_water(hot, model):
            hot.write_meta(model, SEQ_FILE, str(seq).encode())


def reserve_version(
    hot: CheckpointStorage,
    tiers: Mapping[Tier, CheckpointStorage],
    catalog: Catalog,
    model: str,
) -> str:
    """The next version id, recorded durably before anything is written (never reused).

    Above the ``.seq`` mark, every directory in any tier and the newest
    catalog row (a version being deleted included).
    """
    with hot.lock(model):
        high = _high_water(hot, model)
        for storage in tiers.values():
            for name in storage.entries(model):
                high = max(high, layout.parse_seq(model, name) or 0)
        for record in catalog.query(model, include_deleting=True)[-1:]:
            high = max(high, record.seq)
        hot.write_meta(model, SEQ_FILE, str(high + 1).encode())
        return layout.version_id(model, high + 1)
