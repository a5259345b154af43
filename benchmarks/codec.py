"""How fast driftloop decodes and encodes its events, against bare ``orjson.loads``.

For each event type it builds a realistic payload (an InferenceLog with 20
features and 3 class scores, a CheckpointEvent with 6 metrics, ...) and
measures, in the same run and on the same bytes:

- ``decode``: :func:`schemas.codec.decode` (pydantic-core parses and validates in one pass);
- ``via_orjson``: :func:`schemas.codec.decode_via_orjson` (``orjson.loads``, then validation);
- ``orjson.loads``: parsing alone, the baseline;
- ``encode``: :func:`schemas.codec.encode`.

Each figure is the best of ``--rounds`` rounds of ``--n`` calls (these
machines are shared and noisy; the best round is the least disturbed one).
``ratio`` is decode throughput over the orjson.loads baseline; ``dec/two`` is
decode over the two-step orjson path.

Run: ``python -m benchmarks.codec [--json] [--n N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from schemas.codec import decode, decode_via_orjson, encode
from schemas.events import (
    CheckpointEvent,
    DeadLetter,
    Event,
    FeedbackEvent,
    InferenceLog,
    TrainingExample,
    VersionEvent,
    training_example_id,
)

TS = 1_760_000_000_000


def _features() -> dict[str, float | int | str | bool]:
    feats: dict[str, float | int | str | bool] = {f"num_{i}": 0.1 * i + 0.123456 for i in range(14)}
    feats |= {"country": "DE", "device": "ios", "plan": "premium"}
    feats |= {"visits": 17, "age_days": 412, "is_returning": True}
    return feats


def sample_events() -> list[Event]:
    """One realistic event of every type."""
    rid = "req-6f1c2a9e-4d0b-4a77-9d1e-0b8c2f3a4e5d"
    fid = "fb-1b2c3d4e5f60718293a4b5c6d7e8f901"
    return [
        InferenceLog.new(
            request_id=rid,
            model="fraud",
            model_version="v0042",
            features=_features(),
            prediction="legit",
            scores={"legit": 0.91, "fraud": 0.07, "review": 0.02},
            route="live",
            server="model-server-7c9f-2",
            ts=TS,
        ),
        FeedbackEvent.new(request_id=rid, model="fraud", label="legit", weight=1.0, ts=TS),
        TrainingExample.new(
            example_id=training_example_id(rid, fid),
            request_id=rid,
            model="fraud",
            model_version="v0042",
            features=_features(),
            label="legit",
            inference_event_id="inf-0b8c2f3a4e5d6f1c2a9e4d0b4a779d1e",
            feedback_event_id=fid,
            inference_ts=TS - 5_000,
            feedback_ts=TS - 120,
            join_latency_ms=4_880,
            ts=TS,
        ),
        CheckpointEvent.new(
            model="fraud",
            version="v0043",
            parent_version="v0042",
            step=18_250,
            examples_seen=1_168_000,
            trigger="drift",
            metrics={
                "logloss": 0.2134,
                "auc": 0.9412,
                "accuracy": 0.9133,
                "ece": 0.021,
                "drift_p": 0.0012,
                "lr": 0.001,
            },
            location="s3://driftloop-checkpoints/fraud/v0043",
            manifest_sha256="9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            ts=TS,
        ),
        VersionEvent.new(
            model="fraud",
            action="canary",
            live="v0042",
            previous="v0041",
            canary="v0043",
            canary_percent=5.0,
            epoch=117,
            actor="trainer",
            reason="new checkpoint after drift; auc 0.9412 vs 0.9380",
            ts=TS,
        ),
        DeadLetter.capture(
            source_topic="feedback",
            source_partition=2,
            source_offset=1_234_567,
            key=rid.encode(),
            value=b'{"schema_version":1,"event_id":"x","request_id":"r","model":"fraud",'
            b'"ts":1760000000000,"label":NaN}',
            error="label: must be a finite number, got NaN",
            error_kind="decode",
            field="label",
            ts=TS,
        ),
    ]


def best_rate(fn: Callable[[], Any], n: int, rounds: int) -> float:
    """Calls per second of ``fn``: the best of ``rounds`` rounds of ``n`` calls."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - start)
    return n / best


def measure(n: int, rounds: int) -> list[dict[str, Any]]:
    rows = []
    for event in sample_events():
        kind = type(event)
        payload = encode(event)
        assert decode(kind, payload) == event
        assert decode_via_orjson(kind, payload) == event
        loads = best_rate(partial(orjson.loads, payload), n, rounds)
        dec = best_rate(partial(decode, kind, payload), n, rounds)
        two_step = best_rate(partial(decode_via_orjson, kind, payload), n, rounds)
        enc = best_rate(partial(encode, event), n, rounds)
        rows.append(
            {
                "type": kind.__name__,
                "bytes": len(payload),
                "decode_per_s": round(dec),
                "via_orjson_per_s": round(two_step),
                "orjson_loads_per_s": round(loads),
                "decode_vs_orjson_loads": round(dec / loads, 4),
                "decode_vs_via_orjson": round(dec / two_step, 3),
                "encode_per_s": round(enc),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--n", type=int, default=20_000, help="calls per round (default 20000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the best counts (default 5)")
    args = parser.parse_args(argv)
    rows = measure(args.n, args.rounds)
    if args.json:
        print(
            orjson.dumps(
                {"n": args.n, "rounds": args.rounds, "results": rows}, option=orjson.OPT_INDENT_2
            ).decode()
        )
        return 0
    header = (
        f"{'type':<16}{'bytes':>7}{'decode/s':>12}{'orjson.loads/s':>16}{'ratio':>8}"
        f"{'via_orjson/s':>17}{'dec/two':>9}{'encode/s':>12}"
    )
    print(f"n={args.n} rounds={args.rounds} (best round); ratio = decode / orjson.loads")
    print(header)
    for r in rows:
        print(
            f"{r['type']:<16}{r['bytes']:>7}{r['decode_per_s']:>12,}"
            f"{r['orjson_loads_per_s']:>16,}{r['decode_vs_orjson_loads']:>8.3f}"
            f"{r['via_orjson_per_s']:>17,}{r['decode_vs_via_orjson']:>9.2f}"
            f"{r['encode_per_s']:>12,}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
