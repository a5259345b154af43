"""Training throughput through Kafka, against two baselines measured in the same run.

For each shipped example model (river logistic regression, torch hashed FM):

- ``kafka``: examples/s of the trainer agent (faust, in this process) consuming
  ``training-examples`` from the embedded broker, decoding, test-then-train,
  checkpointing to a local store as configured;
- ``memory``: the trainer's own work without the broker and faust: the same
  ``TrainerPool`` handed the same records (their bytes as produced) in
  chunks of the agent's size on one model thread, as the agent hands them
  (decode, test-then-train, checkpoints to a local store of their own): the
  limit of the model thread;
- ``transport``: a bare kafka-python consumer reading the same topic and
  decoding each value with orjson: the transport's limit.

Prints absolute numbers and the ratios kafka/memory and kafka/transport
(``--json`` for machine-readable output), and each model's drift alarms on
river streams in memory: false alarms per 10,000 stationary examples and how
many examples after a concept change the first drift checkpoint came.

The models run as shipped, holdout included: about 10% of the examples
(their requests in ``promotion.holdout_percent``) are read and counted but
never learned, on the kafka and the memory paths alike, so both rates are of
the same work (examples read per second) and their ratio stays fair; drift
positions are positions in the stream, held-out examples included. Anchors (issue 4): Microsoft's
Decision Service learner did 2,000 events/s per core; river's
LogisticRegression alone does about 200k examples/s here; kafka-python
consumes about 60k small messages/s from the embedded broker.

``--runs K`` repeats the three measurements K times per model, each on a
fresh topic and consumer group, and prints min / median / max of each rate
and ratio and max/min (the steadiness between runs); the headline numbers
are those of the median run by kafka rate.

Run: ``python -m benchmarks.train [--examples N] [--runs K] [--json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
from kafka import TopicPartition
from river.datasets import synth

from schemas.codec import encode
from schemas.events import TrainingExample, training_example_id
from services.checkpoints.config import StoreConfig
from services.checkpoints.opener import open_store
from services.checkpoints.signing import ensure_default_key
from services.config import KafkaConfig, TopicsConfig
from services.deadletters import RawRecord
from services.kafka import ensure_topics, make_consumer, make_producer
from services.learning.config import LearningConfig, ModelConfig, example_path, load_config
from services.learning.pool import TrainerPool, partition_of
from services.learning.sink import InMemorySink
from services.learning.synthetic import drift_scenario, examples_from
from services.learning.trainer import OnlineTrainer
from services.stack import EMBEDDED_GROUP_TIMEOUTS, EmbeddedStack
from streams.app import make_app
from streams.trainer import TrainerAgent

MODELS = {"river": ("river_logreg", "river-logreg"), "torch": ("torch_fm", "torch-fm")}
#: Records the agent hands the model thread at once (at most), and the memory run too.
CHUNK = 1000


def make_examples(model: str, n: int, *, seed: int = 5) -> list[TrainingExample]:
    """``n`` TrainingExamples of ``model`` from river's Agrawal generator (9 features)."""
    out: list[TrainingExample] = []
    for i, (x, y) in enumerate(synth.Agrawal(seed=seed).take(n)):
        rid, fid = f"r{i}", f"f{i}"
        features: dict[str, Any] = {
            str(k): (float(v) if isinstance(v, int | float) else str(v)) for k, v in x.items()
        }
        out.append(
            TrainingExample.new(
                event_id=f"e{i}",
                ts=1_700_000_000_000 + i,
                example_id=training_example_id(rid, fid),
                request_id=rid,
                model=model,
                model_version="v0",
                features=features,
                label=bool(y),
                inference_event_id=f"i{i}",
                feedback_event_id=fid,
                inference_ts=1_700_000_000_000 + i,
                feedback_ts=1_700_000_000_100 + i,
                join_latency_ms=100,
            )
        )
    return out


def produce(kafka: KafkaConfig, topic: str, model: str, values: list[bytes]) -> None:
    producer = make_producer(kafka, linger_ms=20, batch_size=256 * 1024)
    for value in values:
        producer.send(topic, key=model.encode(), value=value)
    producer.flush()
    producer.close()


def memory_rate(
    config: ModelConfig, topics: TopicsConfig, values: list[bytes], root: Path
) -> float:
    """Examples/s of the agent's work without the broker: a ``TrainerPool`` like the
    agent's (checkpointing to a store of its own) handed ``values`` as the records
    of the model's partition, in chunks of :data:`CHUNK`, on one model thread."""
    store = open_store(
        ensure_default_key(StoreConfig(root=root / "memory-store")), LearningConfig(model=(config,))
    )
    topic = topics.training_examples
    pool = TrainerPool([config], store, topic=topic, partitions=topics.partitions)
    part = partition_of(config.name, topics.partitions)
    key = config.name.encode()
    records = [RawRecord(topic, part, i, key, value) for i, value in enumerate(values)]
    chunks = [records[i : i + CHUNK] for i in range(0, len(records), CHUNK)]
    with ThreadPoolExecutor(1, thread_name_prefix="trainer") as model_thread:
        model_thread.submit(pool.assign, {part}).result()
        start = time.perf_counter()
        for chunk in chunks:
            model_thread.submit(pool.handle, chunk).result()
        elapsed = time.perf_counter() - start
        model_thread.submit(pool.shutdown).result()
        model_thread.submit(pool.close).result()
    store.close()
    return len(values) / elapsed


def transport_rate(kafka: KafkaConfig, tp: TopicPartition, n: int) -> float:
    """Messages/s of a bare kafka-python consumer + orjson decode of ``n`` records."""
    consumer = make_consumer(kafka)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    seen = 0
    start = time.perf_counter()
    while seen < n:
        for batch in consumer.poll(timeout_ms=200, max_records=5000).values():
            for record in batch:
                orjson.loads(record.value)
                seen += 1
    elapsed = time.perf_counter() - start
    consumer.close()
    return n / elapsed


async def kafka_rate(
    kafka: KafkaConfig, topics: TopicsConfig, config: ModelConfig, n: int, root: Path
) -> tuple[float, dict[str, Any]]:
    """Examples/s of the trainer agent from its first record to its ``n``-th."""
    store = open_store(
        ensure_default_key(StoreConfig(root=root / "store")), LearningConfig(model=(config,))
    )
    pool = TrainerPool(
        [config], store, topic=topics.training_examples, partitions=topics.partitions
    )
    app = make_app(f"bench-{uuid.uuid4().hex[:8]}", kafka, datadir=root / "faust", topics=topics)
    TrainerAgent(app, topics, pool, chunk=CHUNK, chunk_wait_s=0.02)
    await app.start()
    try:
        while pool.stats.records == 0:
            await asyncio.sleep(0.002)
        start = time.perf_counter()
        while pool.stats.records < n:
            await asyncio.sleep(0.002)
        elapsed = time.perf_counter() - start
    finally:
        await app.stop()
        store.close()
    checkpoints = [c.trigger for c in pool.stats.checkpoints]
    return n / elapsed, {"checkpoints": checkpoints}


def drift_alarms(config: ModelConfig, seeds: tuple[int, ...] = (1, 2, 3)) -> dict[str, Any]:
    """Drift checkpoints of the in-memory trainer on river streams of 10,000
    examples: per stationary stream, the count per seed (a false alarm each);
    per changing stream (change at 5,000), examples from the change to the
    first drift checkpoint after it (None: not caught)."""
    out: dict[str, Any] = {}
    for scenario in ("agrawal", "sea", "sea-0-to-3", "sea-inverted"):
        counts, delays = [], []
        for seed in seeds:
            trainer = OnlineTrainer(config, InMemorySink())
            stream = examples_from(drift_scenario(scenario, seed), config.name)
            at = [
                i
                for i, example in enumerate(stream)
                for record in trainer.process(example, topic="t", partition=0, offset=i).checkpoints
                if record.trigger == "drift"
            ]
            counts.append(len(at) if scenario in ("agrawal", "sea") else sum(a < 5000 for a in at))
            delays.append(next((a - 5000 for a in at if a >= 5000), None))
        out[scenario] = {"false_alarms": counts}
        if scenario not in ("agrawal", "sea"):
            out[scenario]["delay"] = delays
    return out


def one_run(
    kafka: KafkaConfig, kind: str, config: ModelConfig, examples: list[TrainingExample], root: Path
) -> dict[str, Any]:
    """The three rates of one run, on a topic of its own (fresh consumer groups)."""
    name, n = config.name, len(examples)
    topics = TopicsConfig(prefix=f"bench-{kind}-{uuid.uuid4().hex[:6]}.", partitions=3)
    ensure_topics(kafka, topics.all_names(), topics)
    values = [encode(e) for e in examples]
    produce(kafka, topics.training_examples, name, values)
    tp = TopicPartition(topics.training_examples, partition_of(name, topics.partitions))
    transport = transport_rate(kafka, tp, n)
    memory = memory_rate(config, topics, values, root)
    through, extra = asyncio.run(kafka_rate(kafka, topics, config, n, root))
    return {
        "kafka_examples_per_s": round(through, 1),
        "memory_examples_per_s": round(memory, 1),
        "transport_messages_per_s": round(transport, 1),
        "ratio_to_memory": round(through / memory, 3),
        "ratio_to_transport": round(through / transport, 3),
        "mean_message_bytes": round(sum(map(len, values)) / n, 1),
        **extra,
    }


def spread(values: list[float]) -> dict[str, float]:
    """min / median / max of ``values`` and max/min (1.0: steady)."""
    low, high = min(values), max(values)
    return {
        "min": round(low, 3),
        "median": round(statistics.median(values), 3),
        "max": round(high, 3),
        "max_over_min": round(high / low, 3) if low > 0 else float("inf"),
    }


def run(n: int, kinds: list[str], runs: int = 1) -> dict[str, Any]:
    results: dict[str, Any] = {"examples": n, "runs": runs, "models": {}}
    with EmbeddedStack(create_topics=False) as info, tempfile.TemporaryDirectory() as tmp:
        kafka = info.kafka_config(**EMBEDDED_GROUP_TIMEOUTS.as_kafka_fields())
        for kind in kinds:
            file, name = MODELS[kind]
            config = load_config(example_path(file)).model(name)
            examples = make_examples(name, n)
            each = [
                one_run(kafka, kind, config, examples, Path(tmp) / f"{kind}-{i}")
                for i in range(runs)
            ]
            by_kafka = sorted(each, key=lambda r: r["kafka_examples_per_s"])
            results["models"][name] = {
                **by_kafka[len(by_kafka) // 2],  # the median run by kafka rate
                "spread": {
                    key: spread([r[key] for r in each])
                    for key in (
                        "kafka_examples_per_s",
                        "memory_examples_per_s",
                        "transport_messages_per_s",
                        "ratio_to_memory",
                        "ratio_to_transport",
                    )
                },
                "each_run": each,
                "drift": drift_alarms(config),
            }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=20_000)
    parser.add_argument("--model", choices=sorted(MODELS), action="append")
    parser.add_argument(
        "--runs", type=int, default=1, help="runs per model, each on a fresh topic and group"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = run(args.examples, args.model or sorted(MODELS), max(args.runs, 1))
    if args.json:
        print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
        return
    print(
        f"training throughput, {results['examples']} examples per model, "
        f"{results['runs']} run(s) each (the median run by kafka rate)"
    )
    for name, r in results["models"].items():
        print(
            f"{name:>13}: kafka {r['kafka_examples_per_s']:>9,.0f}/s | "
            f"in-memory {r['memory_examples_per_s']:>9,.0f}/s (ratio {r['ratio_to_memory']:.3f}) | "
            f"transport {r['transport_messages_per_s']:>9,.0f}/s "
            f"(ratio {r['ratio_to_transport']:.3f}) | checkpoints {r['checkpoints']}"
        )
        if results["runs"] > 1:
            for key, d in r["spread"].items():
                print(
                    f"{'':>13}  {key:>24}: min {d['min']:>10,.3f} median {d['median']:>10,.3f}"
                    f" max {d['max']:>10,.3f} (max/min {d['max_over_min']:.2f})"
                )
        for scenario, d in r["drift"].items():
            rate = sum(d["false_alarms"]) / len(d["false_alarms"])
            caught = f" | caught after {d['delay']} examples" if "delay" in d else ""
            print(
                f"{'':>13}  drift {scenario:>12}: false alarms per 10,000 examples "
                f"{rate:.2f} (seeds 1-3: {d['false_alarms']}){caught}"
            )


if __name__ == "__main__":
    main()
