"""``driftloop pointer restore``: every pointer rebuilt from ``version-events``.

After Redis lost its data, changes to a model whose events are on the topic
are refused (:mod:`.writer`). :func:`restore_pointers` reads the topic from
the beginning to its high watermark (from a fetch response, not
``end_offsets``: see :mod:`.log`), takes each model's event with the highest
epoch — which carries the whole pointer and its rollback history — and
writes it back with :meth:`~.redis.RedisPointer.restore`, only where Redis has
no pointer or a lower epoch (so running it twice, or while changes are made,
never moves a pointer backwards). Model servers keep serving what they last
applied meanwhile; the restored pointer is published on each model's
channel, and a server ignores an epoch it has already applied.

Changes still in the outbox are already in Redis; first :func:`relay_pending
<services.pointer.relay.relay_pending>`, then restore, so nothing logged is
missed (the CLI does both).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from schemas.events import VersionEvent
from services.pointer.base import PointerState


class RestorablePointer(Protocol):
    def get(self, model: str) -> PointerState | None: ...

    def restore(self, event: VersionEvent) -> bool: ...


class PointerLog(Protocol):
    def latest_all(self) -> dict[str, VersionEvent]: ...


@dataclass(frozen=True)
class Restored:
    """What restore did for one model."""

    model: str
    logged_epoch: int
    redis_epoch: int | None
    outcome: Literal["restored", "kept"]

    def as_json(self) -> dict[str, object]:
        return {
            "model": self.model,
            "logged_epoch": self.logged_epoch,
            "redis_epoch": self.redis_epoch,
            "outcome": self.outcome,
        }


def restore_pointers(pointer: RestorablePointer, log: PointerLog) -> list[Restored]:
    """Write back each model's last logged pointer where Redis has none or an older one.

    ``redis_epoch`` is what Redis held before (None: no pointer); ``kept``
    means Redis already had that epoch or a newer one and was left alone.
    """
    out: list[Restored] = []
    for model, event in sorted(log.latest_all().items()):
        before = pointer.get(model)
        written = pointer.restore(event)
        out.append(
            Restored(
                model,
                event.epoch,
                before.epoch if before is not None else None,
                "restored" if written else "kept",
            )
        )
    return out
