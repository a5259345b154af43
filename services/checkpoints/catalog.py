"""The SQLite catalog: a fast, queryable index of committed checkpoints.

The manifests are the truth; the catalog is rebuilt from them by
:meth:`CheckpointStore.reindex`, so losing the file loses nothing. This
module holds every SQL statement of the checkpoint store; the rest of the
package goes through :class:`Catalog`'s methods. It records
per checkpoint: model, version, parent, created time, step, trigger, metrics,
tier and location, size, pins and status (``committed``, or ``deleting``
while GC removes it), and answers queries by model, trigger, time range,
best by a metric, and lineage.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from schemas.errors import CheckpointError
from schemas.manifest import CheckpointManifest

Tier = Literal["hot", "cold"]
Status = Literal["committed", "deleting"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    seq INTEGER NOT NULL,
    parent TEXT,
    created_ts INTEGER NOT NULL,
    step INTEGER NOT NULL,
    examples_seen INTEGER NOT NULL,
    trigger TEXT NOT NULL,
    metrics TEXT NOT NULL,
    key_metric TEXT,
    label TEXT NOT NULL,
    kind TEXT NOT NULL,
    base_version TEXT,
    deps TEXT NOT NULL,
    tier TEXT NOT NULL,
    location TEXT NOT NULL,
    size INTEGER NOT NULL,
    status TEXT NOT NULL,
    PRIMARY KEY (model, version)
);
CREATE INDEX IF NOT EXISTS checkpoints_by_time ON checkpoints (model, created_ts);
CREATE TABLE IF NOT EXISTS pins (
    model TEXT NOT NULL,
    label TEXT NOT NULL,
    version TEXT NOT NULL,
    PRIMARY KEY (model, label)
);
"""

_COLUMNS = (
    "model, version, seq, parent, created_ts, step, examples_seen, trigger, metrics, key_metric, "
    "label, kind, base_version, deps, tier, location, size, status"
)


@dataclass(frozen=True)
class CheckpointRecord:
    """One catalogued checkpoint, as listings and retention policies see it."""

    model: str
    version: str
    seq: int
    parent_version: str | None
    created_ts: int
    step: int
    examples_seen: int
    trigger: str
    metrics: Mapping[str, float]
    key_metric: str | None
    label: str
    kind: str
    base_version: str | None
    dependencies: frozenset[str]
    tier: Tier
    location: str
    size: int
    status: Status
    pins: tuple[str, ...] = field(default=())

    def as_json(self) -> dict[str, Any]:
        """A JSON-able dict for ``--json`` output."""
        return {
            "model": self.model,
            "version": self.version,
            "label": self.label,
            "parent_version": self.parent_version,
            "created_ts": self.created_ts,
            "step": self.step,
            "examples_seen": self.examples_seen,
            "trigger": self.trigger,
            "metrics": dict(self.metrics),
            "key_metric": self.key_metric,
            "kind": self.kind,
            "base_version": self.base_version,
            "dependencies": sorted(self.dependencies),
            "tier": self.tier,
            "location": self.location,
            "size": self.size,
            "status": self.status,
            "pins": list(self.pins),
        }


class Catalog:
    """A SQLite index of checkpoints; safe to share between threads of one process.

    Several processes may open the same file (WAL mode, busy timeout).
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(
                self.path, timeout=30.0, check_same_thread=False, isolation_level=None
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise CheckpointError(f"cannot open catalog: {exc}", path=str(self.path)) from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on error)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def upsert(
        self, manifest: CheckpointManifest, *, tier: Tier, location: str, db: Any = None
    ) -> None:
        """Record a committed checkpoint (replacing any row of the same version)."""
        m = manifest
        row = (
            m.model,
            m.version,
            m.seq,
            m.parent_version,
            m.created_ts,
            m.step,
            m.examples_seen,
            m.trigger,
            orjson.dumps(m.metrics).decode(),
            m.key_metric,
            m.label,
            m.kind,
            m.base_version,
            orjson.dumps(sorted(m.dependencies())).decode(),
            tier,
            location,
            m.size,
            "committed",
        )
        # Column list and placeholders are code constants; every value is a bound parameter.
        sql = f"INSERT OR REPLACE INTO checkpoints ({_COLUMNS}) VALUES ({','.join('?' * 18)})"  # noqa: S608
        if db is not None:
            db.execute(sql, row)
            return
        with self._lock:
            self._db.execute(sql, row)

    def set_status(self, model: str, version: str, status: Status) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE checkpoints SET status=? WHERE model=? AND version=?",
                (status, model, version),
            )

    def set_tier(self, model: str, version: str, tier: Tier, location: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE checkpoints SET tier=?, location=? WHERE model=? AND version=?",
                (tier, location, model, version),
            )

    def remove(self, model: str, version: str, db: Any = None) -> None:
        """Drop the row of one checkpoint (inside transaction ``db`` when given)."""
        sql = "DELETE FROM checkpoints WHERE model=? AND version=?"
        if db is not None:
            db.execute(sql, (model, version))
            return
        with self._lock:
            self._db.execute(sql, (model, version))

    def sync_model(
        self,
        model: str,
        *,
        stale: Sequence[str],
        upserts: Sequence[tuple[CheckpointManifest, Tier, str]],
        pins: Mapping[str, str],
    ) -> None:
        """Apply one scan of ``model`` in one transaction.

        Drops the rows of ``stale`` versions, records each ``(manifest, tier,
        location)`` of ``upserts`` and replaces the pins (label -> version).
        """
        with self.transaction() as db:
            for version in stale:
                self.remove(model, version, db=db)
            for manifest, tier, location in upserts:
                self.upsert(manifest, tier=tier, location=location, db=db)
            self.replace_pins(model, pins, db=db)

    def clear(self) -> None:
        """Drop every checkpoint row and pin (before a reindex rebuilds them)."""
        with self.transaction() as db:
            db.execute("DELETE FROM checkpoints")
            db.execute("DELETE FROM pins")

    def models(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT model FROM checkpoints ORDER BY model")
            return [r[0] for r in rows]

    def get(self, model: str, version: str) -> CheckpointRecord | None:
        """The row of one checkpoint, whatever its status."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM checkpoints WHERE model=? AND version=?",  # noqa: S608
                (model, version),
            ).fetchone()
            pins = self._pins_by_version(model)
        return None if row is None else _record(row, pins)

    def query(
        self,
        model: str | None = None,
        *,
        trigger: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        best_by: str | None = None,
        mode: Literal["min", "max"] = "min",
        limit: int | None = None,
        include_deleting: bool = False,
    ) -> list[CheckpointRecord]:
        """Checkpoints matching every given filter.

        Oldest first (by version sequence); with ``best_by`` a metric name,
        only checkpoints having that metric, best first (``mode`` min or max).
        ``until_ms`` is exclusive, ``since_ms`` inclusive.
        """
        where: list[str] = []
        args: list[Any] = []
        if model is not None:
            where.append("model=?")
            args.append(model)
        if trigger is not None:
            where.append("trigger=?")
            args.append(trigger)
        if since_ms is not None:
            where.append("created_ts>=?")
            args.append(since_ms)
        if until_ms is not None:
            where.append("created_ts<?")
            args.append(until_ms)
        if not include_deleting:
            where.append("status='committed'")
        order = "model, seq"
        if best_by is not None:
            path = f'$."{best_by}"'
            where.append("json_extract(metrics, ?) IS NOT NULL")
            args.append(path)
            order = f"json_extract(metrics, ?) {'ASC' if mode == 'min' else 'DESC'}, seq DESC"
            args.append(path)
        # Clauses are built from code constants; the metric path and all values are bound.
        sql = f"SELECT {_COLUMNS} FROM checkpoints"  # noqa: S608
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {order}"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
            pins: dict[str, dict[str, tuple[str, ...]]] = {}
            for m in {r[0] for r in rows}:
                pins[m] = self._pins_by_version(m)
        return [_record(r, pins.get(r[0], {})) for r in rows]

    def lineage(self, model: str, version: str) -> list[CheckpointRecord]:
        """``version`` and its ancestors through ``parent_version``, newest first.

        The chain stops at the first ancestor the catalog no longer holds.
        """
        chain: list[CheckpointRecord] = []
        seen: set[str] = set()
        current: str | None = version
        while current is not None and current not in seen:
            seen.add(current)
            record = self.get(model, current)
            if record is None:
                break
            chain.append(record)
            current = record.parent_version
        return chain

    def replace_pins(self, model: str, pins: Mapping[str, str], db: Any = None) -> None:
        """Set the pins of ``model`` to ``pins`` (label -> version)."""

        def write(conn: Any) -> None:
            conn.execute("DELETE FROM pins WHERE model=?", (model,))
            conn.executemany(
                "INSERT INTO pins (model, label, version) VALUES (?, ?, ?)",
                [(model, label, version) for label, version in pins.items()],
            )

        if db is not None:
            write(db)
        else:
            with self.transaction() as conn:
                write(conn)

    def _pins_by_version(self, model: str) -> dict[str, tuple[str, ...]]:
        by_version: dict[str, list[str]] = {}
        for label, version in self._db.execute(
            "SELECT label, version FROM pins WHERE model=? ORDER BY label", (model,)
        ):
            by_version.setdefault(version, []).append(label)
        return {v: tuple(labels) for v, labels in by_version.items()}


def _record(row: tuple[Any, ...], pins: Mapping[str, tuple[str, ...]]) -> CheckpointRecord:
    return CheckpointRecord(
        model=row[0],
        version=row[1],
        seq=row[2],
        parent_version=row[3],
        created_ts=row[4],
        step=row[5],
        examples_seen=row[6],
        trigger=row[7],
        metrics=orjson.loads(row[8]),
        key_metric=row[9],
        label=row[10],
        kind=row[11],
        base_version=row[12],
        dependencies=frozenset(orjson.loads(row[13])),
        tier=row[14],
        location=row[15],
        size=row[16],
        status=row[17],
        pins=pins.get(row[1], ()),
    )
