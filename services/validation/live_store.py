"""Live metrics in Redis: the hash ``{prefix}{model}:metrics``, one field per version.

Each field's value is the JSON of that version's figures as
:meth:`~services.validation.live_metrics.LiveMetrics.snapshot` gives them,
plus ``updated_ms`` (wall clock of the write)::

    {"routes": {"live": {"n": 120, "unscored": 0, "defaults": 3, ...,
                         "metrics": {"accuracy": 0.91, "accuracy_total": 0.9}}},
     "updated_ms": 1764679200000}

:class:`LiveMetricsStore` writes them (at most every ``every_s`` seconds, only
the versions whose figures changed since its last write); a version dropped
from memory keeps its last figures here. :func:`read_live_metrics` reads one
model's hash (``driftloop status`` does). This module imports no model code,
so the CLI reads metrics without loading river or torch.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

import orjson
import redis

if TYPE_CHECKING:
    from collections.abc import Mapping

    from services.validation.live_metrics import LiveMetrics

log = logging.getLogger(__name__)

#: Default least time between two writes, in seconds.
PUBLISH_EVERY_S = 5.0


def metrics_key(prefix: str, model: str) -> str:
    """Hash: version -> JSON of its live figures (``RedisConfig().key(model, "metrics")``)."""
    return f"{prefix}{model}:metrics"


class HashReader(Protocol):
    """The Redis call :func:`read_live_metrics` uses (``redis.Redis`` has it)."""

    def hgetall(self, name: str) -> Any: ...


class HashClient(HashReader, Protocol):
    """The two Redis calls the store uses (``redis.Redis`` has both)."""

    def hset(self, name: str, *, mapping: Mapping[Any, Any]) -> Any: ...


class LiveMetricsStore:
    """Publishes a :class:`LiveMetrics`' figures to Redis, rate-limited.

    Parameters
    ----------
    metrics
        The figures to publish.
    client
        A Redis client with ``decode_responses=True`` (or any :class:`HashClient`).
    key_prefix
        ``RedisConfig().key_prefix``.
    every_s
        Least time between two writes, in seconds.

    Flush contract: the owner calls :meth:`publish` after it handled examples
    (every batch or tick) and ``publish(now, force=True)`` when it stops. A
    Redis failure is logged and counted in :attr:`failures`, never raised:
    what was not written is written by the next publish that reaches Redis.
    """

    def __init__(
        self,
        metrics: LiveMetrics,
        client: HashClient,
        *,
        key_prefix: str,
        every_s: float = PUBLISH_EVERY_S,
    ) -> None:
        self.metrics = metrics
        self.client = client
        self.key_prefix = key_prefix
        self.every_s = every_s
        self._last: float | None = None
        self._written: dict[tuple[str, str], int] = {}
        #: Publishes that failed (Redis unreachable or refusing).
        self.failures = 0

    def publish(self, now: float, *, force: bool = False) -> int:
        """Write the versions whose figures changed since the last write; return how many.

        ``now`` is the wall clock in seconds (``time.time()``); it stamps
        ``updated_ms``. Nothing is written (0) when the last write was less
        than ``every_s`` ago, unless ``force``.
        """
        if not force and self._last is not None and now - self._last < self.every_s:
            return 0
        self._last = now
        updated_ms = int(now * 1000)
        written = 0
        snapshot = self.metrics.snapshot()
        # Forget what was written of versions no longer in memory (bounded bookkeeping).
        self._written = {
            k: seq for k, seq in self._written.items() if k[1] in snapshot.get(k[0], {})
        }
        for model, versions in snapshot.items():
            fields: dict[str, str] = {}
            changes: dict[tuple[str, str], int] = {}
            for version, figures in versions.items():
                seen = self.metrics.changed(model, version)
                if self._written.get((model, version)) == seen:
                    continue
                changes[(model, version)] = seen
                value = {**figures, "updated_ms": updated_ms}
                fields[version] = orjson.dumps(value).decode()
            if not fields:
                continue
            key = metrics_key(self.key_prefix, model)
            try:
                self.client.hset(key, mapping=fields)
            except redis.RedisError as exc:
                self.failures += 1
                log.warning("model %s: live metrics not written to %s: %s", model, key, exc)
                continue
            self._written.update(changes)
            written += len(fields)
        return written


def read_live_metrics(client: HashReader, prefix: str, model: str) -> dict[str, dict[str, Any]]:
    """``{version: figures}`` from ``model``'s metrics hash; empty when it has none.

    A field that is not a JSON object is returned as ``{"error": ...}`` so a
    reader shows it instead of failing. Redis errors propagate.
    """
    raw: Mapping[str, str] = client.hgetall(metrics_key(prefix, model))
    out: dict[str, dict[str, Any]] = {}
    for version, text in sorted(raw.items()):
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            value = None
        out[version] = (
            value
            if isinstance(value, dict)
            else {"error": f"not a JSON object in {metrics_key(prefix, model)}"}
        )
    return out
