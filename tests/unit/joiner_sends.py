"""The joiner agent's outputs as the records they become (kind, key, value,
partition, headers), for tests that check bytes on the wire."""

from __future__ import annotations

from schemas.codec import encode
from schemas.events import ShadowScore, TrainingExample
from services.config import TopicsConfig
from services.publish.base import route
from streams.joiner import Forwarded, Send

Wire = tuple[str, bytes | None, bytes, int | None, list[tuple[str, bytes]] | None]


def wire(outs: list[Send], topics: TopicsConfig | None = None) -> list[Wire]:
    """``outs`` as ``(kind, key, value, partition, headers)``; kind ``examples``,
    ``shadow_scores``, ``dead_letters`` or ``repartition``, key as the publisher routes it."""
    topics = topics or TopicsConfig()
    records: list[Wire] = []
    for out in outs:
        if isinstance(out, Forwarded):
            records.append(("repartition", out.key, out.value, out.partition, out.headers))
            continue
        _, key = route(out, topics)
        if isinstance(out, TrainingExample):
            kind = "examples"
        elif isinstance(out, ShadowScore):
            kind = "shadow_scores"
        else:
            kind = "dead_letters"
        records.append((kind, key, encode(out), None, None))
    return records
