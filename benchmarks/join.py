"""Joined pairs/s through the attribution joiner on the embedded broker.

Baseline, same broker, same run: a minimal kafka-python loop that consumes
both input topics, joins in a dict and produces one output per pair. Both
are timed from their first output to their N-th (so group-join and start-up
time are excluded). Prints absolute numbers and the ratio; ``--json`` too.

    .venv/bin/python -m benchmarks.join [--pairs 5000] [--json]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any

import orjson

from schemas.codec import encode
from schemas.events import FeedbackEvent, InferenceLog
from services.config import TopicsConfig
from services.kafka import ensure_topics, make_consumer, make_producer
from services.stack import EMBEDDED_GROUP_TIMEOUTS, EmbeddedStack, StackInfo


def _produce(info: StackInfo, topics: TopicsConfig, pairs: int) -> None:
    kafka = info.kafka_config()
    producer = make_producer(kafka, linger_ms=5, acks=1)
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
        producer.send(topics.inference_logs, key=rid.encode(), value=encode(log))
        producer.send(topics.feedback, key=rid.encode(), value=encode(fb))
    producer.flush()
    producer.close()


def _time_outputs(info: StackInfo, topic: str, count: int, timeout_s: float = 600) -> float:
    """Seconds between the first and the ``count``-th record of ``topic``."""
    consumer = make_consumer(info.kafka_config(), topic)
    seen, first = 0, None
    deadline = time.monotonic() + timeout_s
    while seen < count and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=200).values():
            if first is None:
                first = time.monotonic()
            seen += len(batch)
    consumer.close()
    if first is None or seen < count:
        raise SystemExit(f"only {seen} of {count} outputs on {topic}")
    return time.monotonic() - first


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=5_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with EmbeddedStack(create_topics=False) as info:
        topics = TopicsConfig(prefix=f"bench{uuid.uuid4().hex[:8]}.", partitions=3)
        kafka = info.kafka_config()
        baseline_out = topics.prefix + "baseline-joined"
        ensure_topics(kafka, [*topics.all_names(), baseline_out], topics)
        _produce(info, topics, args.pairs)

        thread = threading.Thread(target=_baseline, args=(info, topics, baseline_out, args.pairs))
        thread.start()
        baseline_s = _time_outputs(info, baseline_out, args.pairs)
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
            joiner_s = _time_outputs(info, topics.training_examples, args.pairs)
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    result = {
        "pairs": args.pairs,
        "joiner_pairs_per_s": args.pairs / joiner_s,
        "baseline_pairs_per_s": args.pairs / baseline_s,
        "ratio_joiner_to_baseline": baseline_s / joiner_s,
    }
    if args.json:
        print(orjson.dumps(result).decode())
    else:
        print(f"joiner    {result['joiner_pairs_per_s']:>10,.0f} pairs/s")
        print(
            f"baseline  {result['baseline_pairs_per_s']:>10,.0f} pairs/s (kafka-python dict join)"
        )
        print(f"ratio     {result['ratio_joiner_to_baseline']:.3f} (joiner / baseline)")


if __name__ == "__main__":
    main()
