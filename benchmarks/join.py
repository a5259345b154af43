"""Joined pairs/s through the attribution joiner on the embedded broker.

Baseline, same broker, same run: a minimal kafka-python loop that consumes
both input topics, joins in a dict and produces one output per pair. Both
are timed from their first output to their N-th, by the outputs' record
timestamps (so group-join and start-up time are excluded, and so is the
output consumer's fetch granularity). The machine's load drifts, so the two take turns:
``--rounds`` rounds, each on fresh topics, baseline then joiner (a new
``python -m streams.joiner`` process per round). Prints each round and the
median of the per-round ratios; ``--json`` too. A second reference, the
joiner's ceiling: the join logic alone on the same records (decode, join over
the joiner's table store with a dict for the faust table, encode), in memory.

    .venv/bin/python -m benchmarks.join [--pairs 5000] [--rounds 3] [--json]
        [--partitioner murmur2|random]

``--partitioner random`` puts every record on a random partition, so about
two thirds of them reach the joiner through its repartition topic: the cost
of a producer that does not key by request_id with murmur2.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson

from schemas.codec import decode, encode
from schemas.events import FeedbackEvent, InferenceLog
from services.attribution import AttributionJoiner, Emit, JoinerConfig, SourceRef
from services.config import TopicsConfig
from services.kafka import ensure_topics, make_consumer, make_producer
from services.stack import EMBEDDED_GROUP_TIMEOUTS, EmbeddedStack, StackInfo
from streams.joiner import TablePendingStore


def _pairs(pairs: int) -> Iterator[tuple[str, bytes, bytes]]:
    """(request_id, inference log, feedback) for ``pairs`` requests, encoded."""
    for i in range(pairs):
        rid = f"r{i}"
        log = InferenceLog.new(
            request_id=rid,
            model="ctr",
            model_version="v1",
            ts=1_000 + i,
            features={"x": float(i), "c": "fr"},
            prediction=0.5,
        )
        fb = FeedbackEvent.new(request_id=rid, model="ctr", ts=1_500 + i, label=i % 2)
        yield rid, encode(log), encode(fb)


def _produce(info: StackInfo, topics: TopicsConfig, pairs: int, partitioner: str) -> None:
    """Keyed by request id; ``murmur2``: kafka-python's default partitioner
    (every record on its join partition), ``random``: a random partition each
    (about two thirds forwarded through the repartition topic)."""
    kafka = info.kafka_config()
    producer = make_producer(kafka, linger_ms=5, acks=1)
    rng = random.Random(0)
    for rid, log, fb in _pairs(pairs):
        for topic, value in ((topics.inference_logs, log), (topics.feedback, fb)):
            where = rng.randrange(topics.partitions) if partitioner == "random" else None
            producer.send(topic, key=rid.encode(), value=value, partition=where)
    producer.flush()
    producer.close()


def _logic_rate(pairs: int) -> float:
    """Pairs/s of the join logic alone: decode, join over the joiner's table store
    (a dict in place of the faust table), encode each example; no Kafka, no faust."""
    store = TablePendingStore({})
    joiner = AttributionJoiner(JoinerConfig(), store)
    records = list(_pairs(pairs))
    start = time.perf_counter()
    for offset, (_, log, fb) in enumerate(records):
        partition = offset % 3
        at_i = SourceRef(topic="i", partition=partition, offset=offset)
        joiner.on_inference(decode(InferenceLog, log), at_i)
        store.flush()
        at_f = SourceRef(topic="f", partition=partition, offset=offset)
        for outcome in joiner.on_feedback(decode(FeedbackEvent, fb), at_f):
            if isinstance(outcome, Emit):
                encode(outcome.example)
        store.flush()
    return pairs / (time.perf_counter() - start)


def _time_outputs(info: StackInfo, topic: str, count: int, timeout_s: float = 600) -> float:
    """Seconds between the first and the ``count``-th record of ``topic``, by
    the records' own timestamps (set by their producer when it was handed
    each record; ms). Timing them as this consumer sees them instead measures
    its fetches: a fast producer's thousands of records arrive in one or two
    fetch responses, and first-to-last shrinks to the gap between two polls."""
    consumer = make_consumer(info.kafka_config(), topic)
    stamps: list[int] = []
    deadline = time.monotonic() + timeout_s
    while len(stamps) < count and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=200).values():
            stamps.extend(record.timestamp for record in batch)
    consumer.close()
    if len(stamps) < count:
        raise SystemExit(f"only {len(stamps)} of {count} outputs on {topic}")
    stamps = sorted(stamps)[:count]  # partitions interleave
    return max(stamps[-1] - stamps[0], 1) / 1000


def _baseline(info: StackInfo, topics: TopicsConfig, out: str, pairs: int) -> None:
    kafka = info.kafka_config(**EMBEDDED_GROUP_TIMEOUTS.as_kafka_fields())
    consumer = make_consumer(
        kafka, topics.inference_logs, topics.feedback, group_id=f"baseline-{uuid.uuid4().hex}"
    )
    producer = make_producer(kafka, linger_ms=5, acks=1)
    pending: dict[str, dict[str, Any]] = {}
    joined = 0
    while joined < pairs:
        for batch in consumer.poll(timeout_ms=200).values():
            for record in batch:
                event = orjson.loads(record.value)
                side = "i" if record.topic == topics.inference_logs else "f"
                half = pending.setdefault(event["request_id"], {})
                half[side] = event
                if len(half) == 2:
                    del pending[event["request_id"]]
                    producer.send(out, value=orjson.dumps(half))
                    joined += 1
    producer.flush()
    producer.close()
    consumer.close()


def _round(info: StackInfo, pairs: int, partitioner: str) -> dict[str, float]:
    """One baseline run and one joiner run on fresh topics: seconds each."""
    topics = TopicsConfig(prefix=f"bench{uuid.uuid4().hex[:8]}.", partitions=3)
    kafka = info.kafka_config()
    baseline_out = topics.prefix + "baseline-joined"
    ensure_topics(kafka, [*topics.all_names(), baseline_out], topics)
    _produce(info, topics, pairs, partitioner)

    thread = threading.Thread(target=_baseline, args=(info, topics, baseline_out, pairs))
    thread.start()
    baseline_s = _time_outputs(info, baseline_out, pairs)
    thread.join()

    env = (
        dict(os.environ)
        | info.env()
        | {
            "DRIFTLOOP_TOPIC_PREFIX": topics.prefix,
            "DRIFTLOOP_TOPIC_PARTITIONS": "3",
            "DRIFTLOOP_JOIN_APP_ID": f"bench-joiner-{uuid.uuid4().hex[:8]}",
            "DRIFTLOOP_JOIN_DATADIR": tempfile.mkdtemp(prefix="bench-joiner-"),
            "DRIFTLOOP_LOG_LEVEL": "warning",
        }
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "streams.joiner"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        joiner_s = _time_outputs(info, topics.training_examples, pairs)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    return {"baseline_s": baseline_s, "joiner_s": joiner_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--partitioner",
        choices=["murmur2", "random"],
        default="murmur2",
        help="where the producer puts records (random: most are forwarded)",
    )
    args = parser.parse_args()
    rounds: list[dict[str, float]] = []
    with EmbeddedStack(create_topics=False) as info:
        for index in range(args.rounds):
            timing = _round(info, args.pairs, args.partitioner)
            joiner = args.pairs / timing["joiner_s"]
            baseline = args.pairs / timing["baseline_s"]
            rounds.append({"joiner_pairs_per_s": joiner, "baseline_pairs_per_s": baseline})
            if not args.json:
                print(
                    f"round {index + 1}/{args.rounds}: joiner {joiner:,.0f} pairs/s,"
                    f" baseline {baseline:,.0f} pairs/s, ratio {joiner / baseline:.3f}",
                    flush=True,
                )
    logic = _logic_rate(args.pairs)
    result = {
        "pairs": args.pairs,
        "partitioner": args.partitioner,
        "rounds": rounds,
        "logic_pairs_per_s": logic,
        "joiner_pairs_per_s": statistics.median(r["joiner_pairs_per_s"] for r in rounds),
        "baseline_pairs_per_s": statistics.median(r["baseline_pairs_per_s"] for r in rounds),
        "ratio_joiner_to_baseline": statistics.median(
            r["joiner_pairs_per_s"] / r["baseline_pairs_per_s"] for r in rounds
        ),
    }
    if args.json:
        print(orjson.dumps(result).decode())
    else:
        print(f"joiner    {result['joiner_pairs_per_s']:>10,.0f} pairs/s (median)")
        print(
            f"baseline  {result['baseline_pairs_per_s']:>10,.0f} pairs/s"
            " (median; kafka-python dict join)"
        )
        print(f"ratio     {result['ratio_joiner_to_baseline']:.3f} (median of per-round ratios)")
        print(
            f"logic     {logic:>10,.0f} pairs/s (the join alone, in memory; joiner / logic"
            f" {result['joiner_pairs_per_s'] / logic:.3f})"
        )


if __name__ == "__main__":
    main()
