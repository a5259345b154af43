"""Compare what the tiers hold with what the catalog says (used by sync, GC and reindex).

A version directory is committed when its ``manifest.json`` validates and
names that model and version. A version directory whose manifest exists but
does not validate (or names another checkpoint) is *corrupt*: manifests are
written whole (renamed into place locally, one put on an object store), so it
is damage, not an interrupted write, and GC moves it to quarantine instead of
deleting it. Anything else under a model directory that looks like ours
(temp dirs of dead writers, version dirs without a manifest, the
``.seq.{pid}.tmp`` files of interrupted bookkeeping writes) is a leftover GC
removes, unless a live process on this host is still writing it.

Also the two findings GC acts on (:class:`Leftover`, :class:`Quarantined`)
and :func:`quarantined_in`, which lists quarantined directories (reads only:
the read-only reader uses it too).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson

from schemas.errors import SchemaError
from schemas.manifest import CheckpointManifest, decode_manifest
from services.checkpoints import layout
from services.checkpoints.catalog import Catalog, Tier
from services.checkpoints.storage import CheckpointStorage


@dataclass(frozen=True)
class Leftover:
    """A directory GC removes: not a committed checkpoint the catalog knows."""

    tier: Tier
    name: str
    reason: str


@dataclass(frozen=True)
class Quarantined:
    """A version directory moved aside because its manifest did not validate."""

    model: str
    tier: Tier
    name: str
    reason: str
    quarantined_ts: int | None

    def as_json(self) -> dict[str, object]:
        return {
            "model": self.model,
            "tier": self.tier,
            "name": self.name,
            "reason": self.reason,
            "quarantined_ts": self.quarantined_ts,
        }


@dataclass
class ScanResult:
    """What the catalog must change to match the tiers, and what GC should remove."""

    upserts: list[tuple[CheckpointManifest, Tier]] = field(default_factory=list)
    stale_rows: list[str] = field(default_factory=list)
    leftovers: list[Leftover] = field(default_factory=list)
    corrupt: list[Leftover] = field(default_factory=list)


def scan_model(
    model: str, tiers: Mapping[Tier, CheckpointStorage], catalog: Catalog, *, deep: bool
) -> ScanResult:
    """Scan every tier's directories of ``model``.

    Without ``deep``, a directory whose committed catalog row points at this
    tier is trusted without reading its manifest.
    """
    result = ScanResult()
    rows = {r.version: r for r in catalog.query(model, include_deleting=True)}
    copies: dict[str, dict[Tier, CheckpointManifest | None]] = {}
    for tier, storage in tiers.items():
        for name in storage.stale_temp_files(model):
            result.leftovers.append(Leftover(tier, name, "temporary file of an interrupted write"))
        for name in storage.entries(model):
            if layout.parse_seq(model, name) is None:
                if layout.work_dir_pid(name) is not None and not storage.in_flight(model, name):
                    result.leftovers.append(Leftover(tier, name, "interrupted save or removal"))
                continue
            row = rows.get(name)
            if not deep and row is not None and row.status == "committed" and row.tier == tier:
                copies.setdefault(name, {})[tier] = None
                continue
            raw = storage.read_manifest(model, name)
            if raw is None:
                if not storage.in_flight(model, name):
                    result.leftovers.append(
                        Leftover(tier, name, "no manifest (interrupted save or deletion)")
                    )
                continue
            try:
                manifest = decode_manifest(raw, model=model, version=name)
            except SchemaError as exc:
                result.corrupt.append(Leftover(tier, name, f"manifest does not validate: {exc}"))
                continue
            if manifest.model != model or manifest.version != name:
                result.corrupt.append(
                    Leftover(tier, name, f"manifest names {manifest.model}/{manifest.version}")
                )
                continue
            copies.setdefault(name, {})[tier] = manifest
    for version, by_tier in copies.items():
        row = rows.get(version)
        if row is not None and row.status == "committed" and row.tier in by_tier:
            chosen: Tier = row.tier
        else:
            chosen = "cold" if "cold" in by_tier else "hot"
        for tier in by_tier:
            if tier != chosen:
                result.leftovers.append(
                    Leftover(tier, version, f"duplicate of the {chosen} copy (interrupted move)")
                )
        found = by_tier[chosen]
        if found is not None and (
            row is None or row.status != "committed" or row.tier != chosen or deep
        ):
            result.upserts.append((found, chosen))
    # Rows of a tier this store was not configured with are left alone, not dropped.
    result.stale_rows = [v for v, r in rows.items() if v not in copies and r.tier in tiers]
    return result


def quarantined_in(model: str, tiers: Mapping[Tier, CheckpointStorage]) -> list[Quarantined]:
    """Quarantined directories of ``model`` in every tier, with the reason each was moved."""
    found: list[Quarantined] = []
    for tier, storage in tiers.items():
        for name, note in storage.quarantined(model):
            facts: dict[str, object] = {}
            with contextlib.suppress(orjson.JSONDecodeError, TypeError):
                loaded = orjson.loads(note or b"")
                facts = loaded if isinstance(loaded, dict) else {}
            ts = facts.get("quarantined_ts")
            found.append(
                Quarantined(
                    model,
                    tier,
                    name,
                    str(facts.get("reason", "no note (reason unknown)")),
                    ts if isinstance(ts, int) else None,
                )
            )
    return found


def quarantined_version(model: str, name: str) -> str | None:
    """``fraud-000042-1733000000000`` (a quarantined directory) -> ``fraud-000042``."""
    version = name.rsplit("-", 1)[0]
    return version if layout.parse_seq(model, version) is not None else None
