"""The whole loop on the embedded stack, for ``feedback_loop`` and ``bad_version``.

- :func:`model_config`: a river model (the shipped example's pipeline) with an
  eager policy: a count checkpoint every ``every_n`` examples, ``auto``
  promotion on a small sample, the guard on;
- :class:`Loop`: an :class:`~services.stack.EmbeddedStack`, a ``driftloop
  worker --role all`` and a ``--role gateway`` subprocess, ``servers``
  ``driftloop serve`` processes (:class:`~benchmarks._serving.ServeProcess`),
  and a :class:`Collector` reading every output topic with record timestamps;
- :class:`Traffic`: a spawned process sending paced predict calls of SEA
  instances (one request id each) to the servers in turn, producing every
  request's feedback to the ``feedback`` topic right after the answer
  (kafka-python), and noting when each server first answered with each version.

Times are wall-clock epoch milliseconds everywhere (record timestamps are the
producers' ``CreateTime``; every process is on this machine, one clock).
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from river.datasets import synth

from benchmarks._common import signing_env, store_config
from benchmarks._serving import ROOT, Example, ServeProcess
from schemas.codec import decode, encode
from schemas.events import (
    CheckpointEvent,
    Features,
    FeedbackEvent,
    InferenceLog,
    TrainingExample,
    Verdict,
    VersionEvent,
)
from schemas.manifest import decode_manifest
from services.checkpoints.opener import open_store
from services.config import KafkaConfig
from services.kafka import ensure_topics, make_consumer, make_producer
from services.learning.config import load_config
from services.stack import StackInfo
from services.validation.base import is_held_out

MODEL = "loop"
#: The shipped river example's classifier step (TOML inline tables are one line).
LOGREG = (
    '{ factory = "river.linear_model.LogisticRegression", params = { optimizer = {'
    ' factory = "river.optim.SGD", params = { lr = 0.1 } } } }'
)
WORKER = [sys.executable, "-c", "from services.cli import main; main()", "worker"]


def model_config(
    path: Path,
    *,
    every_n: int,
    holdout_percent: float,
    min_examples: int,
    holdout_size: int,
    guard_min: int,
    cooldown_s: float,
    detector_min: int | None = None,
) -> Example:
    """Write the benchmark's model configuration to ``path``; the parsed example.

    ``detector_min``: give the guard the shipped river example's ADWIN on the live
    error stream, judging early at that many held-out examples (None: no detector).
    """
    detector = (
        ""
        if detector_min is None
        else f"""detector_min_examples = {detector_min}

[model.guard.detector]
kind = "ADWIN"
input = "error"
params = {{ delta = 0.002, clock = 8 }}
"""
    )
    path.write_text(f"""
[[model]]
name = "{MODEL}"
kind = "river"
seed = 7
batch_size = 32

[model.factory]
path = "services.learning.factory.pipeline"
params = {{ steps = [
  {{ factory = "river.preprocessing.StandardScaler" }},
  {LOGREG},
] }}

[model.metrics]
names = ["accuracy", "log_loss"]
key = "accuracy"

[model.triggers]
every_n = {every_n}
on_drift = false

[model.retention]
policies = [{{ policy = "latest_n", params = {{ n = 100000 }} }}]

[model.promotion]
mode = "auto"
metric = "accuracy"
tolerance = 0.05
min_examples = {min_examples}
holdout_percent = {holdout_percent}
holdout_size = {holdout_size}

[model.guard]
enabled = true
threshold = 0.1
min_examples = {guard_min}
watch_examples = 100000
cooldown_s = {cooldown_s}
{detector}""")
    learning = load_config(path)
    return Example("loop", path, learning, MODEL)


def seq(version: str) -> int:
    """``loop-000042`` -> 42."""
    return int(version.rsplit("-", 1)[1])


def sea(seed: int, prefix: str) -> Iterator[tuple[str, Features, bool]]:
    """(request_id, features, label) of SEA variant 0."""
    for i, (x, y) in enumerate(synth.SEA(variant=0, seed=seed)):
        features: Features = {str(k): float(v) for k, v in x.items()}
        yield f"{prefix}{i}", features, bool(y)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- the traffic process ------------------------------------------------------


@dataclass
class TrafficResult:
    """What the traffic process did."""

    sent: dict[str, int] = field(default_factory=dict)
    """request_id -> epoch ms its feedback was produced (every answered request)."""
    first_seen: dict[str, dict[str, int]] = field(default_factory=dict)
    """server -> version -> epoch ms of the first answer naming it."""
    served: dict[str, int] = field(default_factory=dict)
    """version -> instances it answered."""
    calls: int = 0
    failed: int = 0
    late_s: float = 0.0
    """Largest lag behind the pacing schedule (the client or the servers fell behind)."""
    errors: list[str] = field(default_factory=list)


def _traffic_main(spec: dict[str, Any], queue: Any, ready: Any, stop: Any) -> None:
    urls: list[str] = spec["urls"]
    per_thread = spec["rate"] / spec["batch"] / len(urls)
    producer = make_producer(spec["kafka"], linger_ms=0, acks=1)
    topic, model, batch = spec["feedback_topic"], spec["model"], spec["batch"]
    data = sea(spec["seed"], "r")
    lock = threading.Lock()
    result = TrafficResult()
    ready.set()

    def loop(url: str) -> None:
        first: dict[str, int] = {}
        due = time.monotonic()
        path = f"/v1/models/{model}:predict"
        with httpx.Client(base_url=url, timeout=30.0) as client:
            while not stop.is_set():
                due += 1.0 / per_thread
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                with lock:
                    result.late_s = max(result.late_s, -wait)
                    chunk = list(itertools.islice(data, batch))
                body = orjson.dumps(
                    {"instances": [{"request_id": r, "features": f} for r, f, _ in chunk]}
                )
                try:
                    r = client.post(
                        path, content=body, headers={"content-type": "application/json"}
                    )
                except httpx.HTTPError as exc:
                    with lock:
                        result.failed += 1
                        result.errors.append(f"{url}: {type(exc).__name__}: {exc}"[:200])
                    continue
                at = now_ms()
                if r.status_code != 200:
                    with lock:
                        result.failed += 1
                        result.errors.append(f"{url}: HTTP {r.status_code} {r.text[:150]}")
                    continue
                version = str(orjson.loads(r.content)["model_version"])
                first.setdefault(version, at)
                for rid, _, label in chunk:
                    fb = FeedbackEvent.new(
                        event_id=f"f-{rid}", request_id=rid, model=model, ts=now_ms(), label=label
                    )
                    producer.send(topic, key=rid.encode(), value=encode(fb))
                    sent = now_ms()
                    with lock:
                        result.sent[rid] = sent
                with lock:
                    result.calls += 1
                    result.served[version] = result.served.get(version, 0) + len(chunk)
        with lock:
            result.first_seen[url] = first

    threads = [threading.Thread(target=loop, args=(u,)) for u in urls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    producer.flush()
    producer.close()
    result.errors = result.errors[:5]
    queue.put(result)


class Traffic:
    """Paced predict calls and their feedback in a spawned process, until :meth:`finish`."""

    def __init__(self, spec: dict[str, Any]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._stop, self._ready, self._queue = ctx.Event(), ctx.Event(), ctx.Queue()
        self._proc = ctx.Process(
            target=_traffic_main, args=(spec, self._queue, self._ready, self._stop), daemon=True
        )
        self._proc.start()
        if not self._ready.wait(120):
            raise SystemExit("the traffic process did not start")

    def finish(self) -> TrafficResult:
        self._stop.set()
        try:
            result: TrafficResult = self._queue.get(timeout=120)
        finally:
            self._proc.join(10)
            if self._proc.is_alive():
                self._proc.kill()
        return result


# -- reading the outputs ------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    version: str
    ts: int
    offsets: dict[int, int]
    """training-examples partition -> next offset the checkpoint had not consumed."""


@dataclass(frozen=True)
class Joined:
    partition: int
    offset: int
    ts: int
    held_out: bool


class Collector:
    """A thread reading training-examples, checkpoint-events, version-events and
    verdicts from the beginning, keeping what the benchmarks need."""

    def __init__(self, info: StackInfo, store: Path, holdout_percent: float) -> None:
        self.topics = info.topics
        self.store = store
        self.holdout_percent = holdout_percent
        self.lock = threading.Lock()
        self.examples: dict[str, Joined] = {}
        self.checkpoints: list[Checkpoint] = []
        self.changes: list[tuple[int, VersionEvent]] = []
        """(record timestamp, event)."""
        self.verdicts: list[Verdict] = []
        self.unreadable = 0
        self._stop = threading.Event()
        self._consumer: KafkaConsumer = make_consumer(info.kafka_config(), fetch_max_wait_ms=50)
        names = [
            self.topics.training_examples,
            self.topics.checkpoint_events,
            self.topics.version_events,
            self.topics.verdicts,
        ]
        parts = [
            TopicPartition(n, p)
            for n in names
            for p in sorted(self._consumer.partitions_for_topic(n) or {0})
        ]
        self._consumer.assign(parts)
        self._consumer.seek_to_beginning(*parts)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for tp, records in self._consumer.poll(timeout_ms=100).items():
                for r in records:
                    try:
                        self._take(tp.topic, r.partition, r.offset, r.timestamp, r.value)
                    except Exception:  # noqa: BLE001 - counted; a benchmark reads on
                        self.unreadable += 1
        self._consumer.close(autocommit=False)

    def _take(self, topic: str, partition: int, offset: int, ts: int, value: bytes) -> None:
        t = self.topics
        if topic == t.training_examples:
            ex = decode(TrainingExample, value)
            held = is_held_out(ex.request_id, self.holdout_percent)
            with self.lock:
                self.examples.setdefault(ex.request_id, Joined(partition, offset, ts, held))
        elif topic == t.checkpoint_events:
            ce = decode(CheckpointEvent, value)
            path = self.store / ce.model / ce.version / "manifest.json"
            manifest = decode_manifest(path.read_bytes())
            parts = manifest.offsets.get(t.training_examples, {})
            point = Checkpoint(ce.version, ts, {int(p): o for p, o in parts.items()})
            with self.lock:
                self.checkpoints.append(point)
        elif topic == t.version_events:
            ve = decode(VersionEvent, value)
            with self.lock:
                self.changes.append((ts, ve))
        else:
            verdict = decode(Verdict, value)
            with self.lock:
                self.verdicts.append(verdict)

    def counts(self) -> tuple[int, int, int]:
        """(examples, checkpoints, gateway promotions) so far."""
        with self.lock:
            promotions = sum(1 for _, e in self.changes if e.actor == "gateway")
            return len(self.examples), len(self.checkpoints), promotions

    def live(self) -> str | None:
        with self.lock:
            return self.changes[-1][1].live if self.changes else None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(30)


# -- the processes ------------------------------------------------------------


class Loop:
    """Worker, gateway and servers on ``info``; :meth:`close` stops them all."""

    def __init__(
        self,
        info: StackInfo,
        example: Example,
        workdir: Path,
        *,
        servers: int,
        window_ms: int = 10_000,
    ) -> None:
        self.info = info
        self.example = example
        self.workdir = workdir
        self.store = store_config(workdir / "store", fsync=False)
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.servers: list[ServeProcess] = []
        env = dict(os.environ) | info.env() | signing_env(self.store.root)
        env |= {
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "DRIFTLOOP_STORE_ROOT": str(self.store.root),
            "DRIFTLOOP_STORE_FSYNC": "false",
            "DRIFTLOOP_JOIN_WINDOW_MS": str(window_ms),
            "DRIFTLOOP_JOIN_GRACE_MS": "1000",
            "DRIFTLOOP_JOIN_FEEDBACK_POLICY": "first",
            "DRIFTLOOP_JOIN_NO_FEEDBACK_POLICY": "drop",
        }
        self.env = env
        with open_store(self.store, example.learning):
            pass  # created here: the servers open it read-only and may start first
        for role, extra in (
            ("all", {"DRIFTLOOP_WORKER_APP_ID": "bench-all"}),
            (
                "gateway",
                {
                    "DRIFTLOOP_WORKER_APP_ID": "bench-gateway",
                    "DRIFTLOOP_WORKER_TICK_INTERVAL_S": "0.2",
                },
            ),
        ):
            argv = [*WORKER, "--role", role, "--config", str(example.path)]
            argv += ["--store", str(self.store.root)]
            with (workdir / f"worker-{role}.log").open("ab") as out:
                proc = subprocess.Popen(argv, env=env | extra, stdout=out, stderr=subprocess.STDOUT)
            self.procs.append((role, proc))
        for i in range(servers):
            self.servers.append(
                ServeProcess(info, example, self.store, workdir, f"serve-{i}").start()
            )
        ensure_topics(info.kafka_config(), ["bench-floor"], info.topics)

    @property
    def kafka(self) -> KafkaConfig:
        return self.info.kafka_config()

    def check(self) -> None:
        """SystemExit with the log's tail if a worker died."""
        for role, proc in self.procs:
            if proc.poll() is not None:
                tail = (self.workdir / f"worker-{role}.log").read_text(errors="replace")[-3000:]
                raise SystemExit(f"worker --role {role} exited:\n{tail}")

    def bootstrap(self, n: int, seed: int) -> None:
        """``n`` inference logs straight to inference-logs and their feedback (nothing live)."""
        producer = make_producer(self.kafka)
        topics = self.info.topics
        now = now_ms()
        for rid, features, label in itertools.islice(sea(seed, "b"), n):
            log = InferenceLog.new(
                event_id=f"i-{rid}", request_id=rid, model=MODEL, model_version="bootstrap",
                ts=now, features=features, prediction=False, route="live", server="bench-boot",
            )  # fmt: skip
            fb = FeedbackEvent.new(
                event_id=f"f-{rid}", request_id=rid, model=MODEL, ts=now + 1, label=label
            )
            producer.send(topics.inference_logs, key=rid.encode(), value=encode(log))
            producer.send(topics.feedback, key=rid.encode(), value=encode(fb))
        producer.flush()
        producer.close()

    def wait_serving(self, timeout_s: float = 300.0) -> None:
        """Until every server names a live version."""
        path = f"/v1/models/{MODEL}"
        deadline = time.monotonic() + timeout_s
        for s in self.servers:

            def ok(client: httpx.Client) -> bool:
                self.check()
                return client.get(path).json().get("live") is not None

            s.wait_until("a live version", ok, max(1.0, deadline - time.monotonic()))

    def traffic(self, rate: float, batch: int, seed: int) -> Traffic:
        return Traffic(
            {
                "urls": [s.url for s in self.servers],
                "rate": rate,
                "batch": batch,
                "model": MODEL,
                "seed": seed,
                "kafka": self.kafka,
                "feedback_topic": self.info.topics.feedback,
            }
        )

    def close(self) -> None:
        for s in self.servers:
            s.stop()
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for _, proc in self.procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def floor_round_trips(kafka: KafkaConfig, stop: threading.Event, out: list[float]) -> None:
    """One record produced and consumed on topic ``bench-floor`` every 0.2 s until
    ``stop``; each round trip (seconds) appended to ``out``. The consumer asks the
    broker to answer a fetch within 10 ms: the transport's best case."""
    producer: KafkaProducer = make_producer(kafka, linger_ms=0)
    consumer: KafkaConsumer = make_consumer(kafka, fetch_max_wait_ms=10)
    tp = TopicPartition("bench-floor", 0)
    consumer.assign([tp])
    consumer.seek_to_end(tp)
    consumer.poll(timeout_ms=100)
    try:
        i = 0
        while not stop.is_set():
            i += 1
            mark = f"{i}".encode()
            t0 = time.perf_counter()
            producer.send("bench-floor", value=mark, partition=0)
            producer.flush()
            got = False
            while not got and time.perf_counter() - t0 < 10 and not stop.is_set():
                for records in consumer.poll(timeout_ms=20).values():
                    got = got or any(r.value == mark for r in records)
            if got:
                out.append(time.perf_counter() - t0)
            stop.wait(0.2)
    finally:
        producer.close()
        consumer.close(autocommit=False)
