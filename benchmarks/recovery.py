"""Recovery time of the trainer after kill -9, on the embedded broker.

A ``driftloop worker --role trainer`` subprocess trains the river example
model on a fixed log of examples; once it has committed a few checkpoints it
is killed with SIGKILL at a random moment and restarted in the same consumer
group. Measured, per kill, in seconds from the kill:

- ``learning``: until the restarted worker trains its first batch (process
  start, imports, group join, restore of the newest checkpoint, seek, fetch);
- ``caught_up``: until it has consumed up to the high watermark of the
  model's partition (read with ``services.kafka.high_watermarks``, from fetch
  responses: ``end_offsets`` is wrong on Tansu).

Baseline, measured in the same run: a cold start (empty store) of the same
worker until it learns, so ``learning`` is also printed as a ratio to it.

Each restart's ``learning`` is split by the lines the worker logs (their own
timestamps, against the wall clock at the kill):

- ``start_imports``: the process starts and imports everything up to
  ``streams.worker.build``;
- ``preflight``: configuration, the checkpoint store, the pre-flight restore
  check, topics, until faust's worker starts;
- ``app_start``: faust starts producer, consumer and table manager, until the
  consumer asks to join the group;
- ``group_join``: until the broker answers the join. The embedded broker makes
  a group's first join wait out the rebalance timeout (here 1 s: the
  ``max_poll_interval_ms`` below), which is reported apart:
  ``learning_excl_join_s`` is ``learning`` without it;
- ``restore``: group sync, faust's seek to committed offsets and the
  trainer's restore of the newest checkpoint and seek to its offsets;
- ``first_batch``: fetch, decode and the first micro-batch trained.

The trainer role has no faust tables: faust's table recovery finds nothing
to do and ends within ``restore``. Also per restart, ``cpu_s``: the CPU
seconds (user + system, from ``/proc``) the restarted process had used when
it learned, which a loaded machine inflates far less than wall times.

Apache Kafka's static membership (KIP-345; ``group.instance.id``, faust's
``consumer_group_instance_id``) gives a member that restarts within its
session timeout its previous assignment back without a rebalance, so the
``group_join`` wait would shrink to a JoinGroup/SyncGroup round trip there;
it is not measured here (the embedded broker is Tansu).

Run: ``python -m benchmarks.recovery [--examples N] [--kills K] [--json]``.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from kafka import TopicPartition

from benchmarks._common import signing_env
from benchmarks.train import make_examples, produce
from schemas.codec import encode
from services.config import TopicsConfig
from services.kafka import ensure_topics, high_watermarks
from services.learning.config import example_path
from services.learning.pool import partition_of
from services.stack import EmbeddedStack

MODEL = "river-logreg"
WORKER = [sys.executable, "-c", "from services.cli import main; main()", "worker"]
_CAUGHT_UP = re.compile(r"trainer caught up: partition (\d+) at offset (\d+)")
#: A log line's own timestamp, in either format the worker writes (ours, faust's).
_STAMP = re.compile(r"^\[?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})\]?")
#: The phases of a restart (see the module docstring), each ending at the first
#: line matching its pattern, in order.
PHASES: tuple[tuple[str, str], ...] = (
    ("start_imports", r"worker \S+: building"),
    ("preflight", r"\[\^Worker\]: Starting"),
    ("app_start", r"\(Re-\)joining group"),
    ("group_join", r"Joined group"),
    ("restore", r"trainer owns partitions"),
    ("first_batch", r"model \S+: learning"),
)


def line_time(line: str) -> float | None:
    """The epoch seconds a log line was written at (local time, ms), or None."""
    match = _STAMP.match(line)
    if match is None:
        return None
    return time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")) + (
        int(match.group(2)) / 1000
    )


def phases(text: str, killed_at: float) -> dict[str, float]:
    """Seconds of each restart phase from the worker's log ``text`` (kill at
    ``killed_at``, epoch seconds); a phase whose line is missing is absent."""
    out: dict[str, float] = {}
    lines = text.splitlines()
    previous, at = killed_at, 0
    for name, pattern in PHASES:
        found = next((i for i in range(at, len(lines)) if re.search(pattern, lines[i])), None)
        stamp = line_time(lines[found]) if found is not None else None
        if found is None or stamp is None:
            break
        out[name] = max(stamp - previous, 0.0)
        previous, at = stamp, found
    return out


class Worker:
    """A trainer subprocess; its log is polled for the marker lines."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.offset = log.stat().st_size if log.exists() else 0
        self._out = log.open("ab")
        self.proc = subprocess.Popen(
            [*WORKER, "--role", "trainer", "--config", str(example_path("river_logreg"))],
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def cpu_s(self) -> float | None:
        """CPU seconds (user + system) this process has used so far; None off Linux."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def text(self) -> str:
        with self.log.open("rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace")

    def wait_for(self, pattern: str, timeout_s: float = 120.0) -> float:
        """perf_counter() when ``pattern`` first appears in this process's log."""
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            if re.search(pattern, self.text()):
                return time.perf_counter()
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited:\n{self.text()[-2000:]}")
            time.sleep(0.005)
        raise RuntimeError(f"no {pattern!r} in time:\n{self.text()[-2000:]}")

    def kill(self) -> tuple[float, float]:
        """SIGKILL; perf_counter() and the wall clock at the kill."""
        self.proc.send_signal(signal.SIGKILL)
        at, wall = time.perf_counter(), time.time()
        self.proc.wait(timeout=30)
        self._out.close()
        return at, wall

    def abort(self) -> None:
        """SIGKILL the process if it still runs (after a failure: its broker goes away)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._out.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)
        self._out.close()


def run(n: int, kills: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    with EmbeddedStack(create_topics=False) as info, tempfile.TemporaryDirectory() as tmp:
        topics = TopicsConfig(prefix=f"recovery-{uuid.uuid4().hex[:6]}.", partitions=3)
        kafka = info.kafka_config(
            session_timeout_ms=2000, heartbeat_interval_ms=300, max_poll_interval_ms=1000
        )
        ensure_topics(kafka, topics.all_names(), topics)
        produce(
            kafka, topics.training_examples, MODEL, [encode(e) for e in make_examples(MODEL, n)]
        )
        tp = TopicPartition(topics.training_examples, partition_of(MODEL, topics.partitions))
        target = high_watermarks(kafka, [topics.training_examples])[tp]
        env = (
            dict(os.environ)
            | info.env()
            | {
                "DRIFTLOOP_KAFKA_SESSION_TIMEOUT_MS": "2000",
                "DRIFTLOOP_KAFKA_HEARTBEAT_INTERVAL_MS": "300",
                "DRIFTLOOP_KAFKA_MAX_POLL_INTERVAL_MS": "1000",
                "DRIFTLOOP_TOPIC_PREFIX": topics.prefix,
                "DRIFTLOOP_TOPIC_PARTITIONS": str(topics.partitions),
                "DRIFTLOOP_STORE_ROOT": str(Path(tmp) / "store"),
                "DRIFTLOOP_WORKER_APP_ID": f"recovery-{uuid.uuid4().hex[:6]}",
            }
            | signing_env(Path(tmp) / "store")
        )
        log = Path(tmp) / "worker.log"
        started = time.perf_counter()
        worker = Worker(env, log)
        try:
            cold_learning = worker.wait_for(r"model \S+: learning") - started
            samples: list[dict[str, float]] = []
            for _ in range(kills):
                # Kill mid-stream, after it has committed at least one checkpoint.
                worker.wait_for(r"checkpoint \S+ trigger=")
                time.sleep(rng.uniform(0.0, 0.5))
                killed_at, killed_wall = worker.kill()
                worker = Worker(env, log)
                learning = worker.wait_for(r"model \S+: learning") - killed_at
                cpu = worker.cpu_s()
                caught = worker.wait_for(_CAUGHT_UP.pattern) - killed_at
                match = _CAUGHT_UP.search(worker.text())
                if match is None or int(match.group(2)) != target:
                    raise RuntimeError(f"caught up at {match and match.group(2)}, not at {target}")
                split = phases(worker.text(), killed_wall)
                samples.append(
                    {
                        "learning_s": learning,
                        "caught_up_s": caught,
                        "learning_excl_join_s": learning - split.get("group_join", 0.0),
                        **({"cpu_s": cpu} if cpu is not None else {}),
                        **{f"{name}_s": value for name, value in split.items()},
                    }
                )
                produce(
                    kafka,
                    topics.training_examples,
                    MODEL,
                    [encode(e) for e in make_examples(MODEL, n // 4, seed=rng.randrange(10**6))],
                )
                target = high_watermarks(kafka, [topics.training_examples])[tp]
            worker.stop()
        finally:
            worker.abort()  # a failed run leaves no worker behind
    learning_s = [s["learning_s"] for s in samples]
    caught_s = [s["caught_up_s"] for s in samples]
    excl_s = [s["learning_excl_join_s"] for s in samples]
    cpu_s = [s["cpu_s"] for s in samples if "cpu_s" in s]
    return {
        "examples": n,
        "kills": kills,
        "cold_start_learning_s": round(cold_learning, 3),
        "learning_s_min": round(min(learning_s), 3),
        "learning_s_median": round(statistics.median(learning_s), 3),
        "learning_s_max": round(max(learning_s), 3),
        "learning_excl_join_s_min": round(min(excl_s), 3),
        "learning_excl_join_s_median": round(statistics.median(excl_s), 3),
        "learning_excl_join_s_max": round(max(excl_s), 3),
        "cpu_s_median": round(statistics.median(cpu_s), 3) if cpu_s else None,
        "phases_s_median": {
            name: round(statistics.median(s.get(f"{name}_s", 0.0) for s in samples), 3)
            for name, _ in PHASES
        },
        "caught_up_s_median": round(statistics.median(caught_s), 3),
        "caught_up_s_max": round(max(caught_s), 3),
        "ratio_learning_to_cold_start": round(statistics.median(learning_s) / cold_learning, 3),
        "samples": [{k: round(v, 3) for k, v in s.items()} for s in samples],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=20_000)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = run(args.examples, args.kills, args.seed)
    if args.json:
        print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
        return
    print(
        f"trainer recovery after kill -9 ({results['kills']} kills, {results['examples']} examples)"
    )
    print(f"  cold start until learning: {results['cold_start_learning_s']:.2f} s (baseline)")
    print(
        f"  kill -9 -> learning again: min {results['learning_s_min']:.2f} s, median "
        f"{results['learning_s_median']:.2f} s, max {results['learning_s_max']:.2f} s "
        f"(ratio to cold start {results['ratio_learning_to_cold_start']:.2f})"
    )
    print(
        f"  kill -9 -> learning again without the group join wait: min "
        f"{results['learning_excl_join_s_min']:.2f} s, median "
        f"{results['learning_excl_join_s_median']:.2f} s, "
        f"max {results['learning_excl_join_s_max']:.2f} s"
    )
    print(
        "  phases (median s): "
        + ", ".join(f"{name} {value:.2f}" for name, value in results["phases_s_median"].items())
    )
    join = results["phases_s_median"].get("group_join", 0.0)
    print(
        f"  group join wait: {join:.2f} s (the embedded broker waits out the rebalance timeout;"
        " Apache Kafka's static membership would skip it for a member restarting within its"
        " session timeout: not measured here)"
    )
    if results["cpu_s_median"] is not None:
        print(
            f"  CPU used by the restarted worker until learning: median"
            f" {results['cpu_s_median']:.2f} s"
        )
    print(
        f"  kill -9 -> caught up to the high watermark: median "
        f"{results['caught_up_s_median']:.2f} s, max {results['caught_up_s_max']:.2f} s"
    )


if __name__ == "__main__":
    main()
