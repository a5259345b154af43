"""The validation gateway and the guard on the real stack (issue 11).

A ``driftloop worker --role all`` (joiner and trainer) and a ``driftloop
worker --role gateway`` run on the embedded broker and Redis with a river
model whose policy is ``auto`` and whose guard is on; the test writes
inference logs and feedback as a model server and a feedback producer would.

1. The trainer's checkpoints are promoted by the gateway alone: the first
   as the bootstrap (nothing live), later ones on the holdout, each with a
   verdict that carries its figures.
2. A poisoned checkpoint (trained on inverted labels, written through the
   real signing checkpointer, so it verifies) is offered as a candidate: the
   gateway rejects it for its figures.
3. An operator forces it live (``driftloop promote``): the guard rolls it
   back within twice its minimum sample of held-out examples, and the audit
   trail (``version-events``) says who and why.

Phases 2 and 3 send only held-out requests, which the trainer never learns,
so no new candidate of the trainer's can race the guard.
"""

from __future__ import annotations

import itertools
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import redis
from river.datasets import synth

from schemas.codec import decode, encode
from schemas.events import CheckpointEvent, FeedbackEvent, InferenceLog, Verdict, VersionEvent
from services.checkpoints.config import StoreConfig
from services.demo.poison import write_poisoned
from services.learning.config import parse_config
from services.pointer.base import pointer_key
from services.pointer.factory import references_from_env
from services.stack.process import free_port
from services.validation.base import is_held_out
from tests.integration._procs import WorkerProcess, produce, worker_env
from tests.integration._serving import cli, server_env

if TYPE_CHECKING:
    from tests.integration.conftest import Sandbox

MODEL = "gated"
HOLDOUT = 20.0
MIN_EXAMPLES = 30
GUARD_MIN = 30

CONFIG = f"""
[[model]]
name = "{MODEL}"
kind = "river"
seed = 7
batch_size = 16

[model.factory]
path = "services.learning.factory.pipeline"
params = {{ steps = [
  {{ factory = "river.preprocessing.StandardScaler" }},
  {{ factory = "river.linear_model.LogisticRegression" }},
] }}

[model.metrics]
names = ["accuracy", "log_loss"]
key = "accuracy"

[model.triggers]
every_n = 300
on_drift = false

[model.promotion]
mode = "auto"
metric = "accuracy"
tolerance = 0.05
min_examples = {MIN_EXAMPLES}
holdout_percent = {HOLDOUT}
holdout_size = 300

[model.guard]
enabled = true
threshold = 0.1
min_examples = {GUARD_MIN}
watch_examples = 1000
cooldown_s = 5.0
"""


Pair = tuple[str, dict[str, Any], bool]


def _pairs(seed: int, *, held_out: bool | None = None) -> Iterator[Pair]:
    """(request_id, features, label) of SEA, optionally only (not) held-out requests."""
    for i, (x, y) in enumerate(synth.SEA(variant=0, seed=seed)):
        rid = f"s{seed}-{i}"
        if held_out is None or is_held_out(rid, HOLDOUT) == held_out:
            yield rid, {str(k): float(v) for k, v in x.items()}, bool(y)


def _send(sandbox: Sandbox, pairs: Iterator[Pair], n: int) -> None:
    now = int(time.time() * 1000)
    logs, feedback = [], []
    for rid, features, label in itertools.islice(pairs, n):
        log = InferenceLog.new(
            event_id=f"i-{rid}",
            request_id=rid,
            model=MODEL,
            model_version="unknown",
            ts=now,
            features=features,
            prediction=False,
            route="live",
        )
        fb = FeedbackEvent.new(
            event_id=f"f-{rid}", request_id=rid, model=MODEL, ts=now + 1, label=label
        )
        logs.append((rid.encode(), encode(log)))
        feedback.append((rid.encode(), encode(fb)))
    produce(sandbox, sandbox.topics.inference_logs, logs)
    produce(sandbox, sandbox.topics.feedback, feedback)


class Topic:
    """Everything read so far from one topic (no group), decoded."""

    def __init__(self, sandbox: Sandbox, topic: str, kind: type[Any]) -> None:
        from services.kafka import make_consumer

        self.consumer = make_consumer(sandbox.kafka, topic)
        self.kind = kind
        self.seen: list[Any] = []

    def poll(self) -> list[Any]:
        for batch in self.consumer.poll(timeout_ms=200).values():
            self.seen.extend(decode(self.kind, r.value) for r in batch)
        return self.seen

    def close(self) -> None:
        self.consumer.close(autocommit=False)


def _wait(
    cond: Callable[[], Any], what: str, procs: list[WorkerProcess], timeout_s: float = 180.0
) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        for proc in procs:
            assert proc.alive(), f"{proc.role} died:\n{proc.text()[-4000:]}"
        time.sleep(0.2)
    tails = "\n".join(f"--- {p.role}\n{p.text()[-3000:]}" for p in procs)
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


def start_loop(
    sandbox: Sandbox,
    tmp_path: Path,
    config_text: str,
    *,
    join_window_ms: int = 60_000,
    **gateway_env: str,
) -> tuple[Path, Path, list[WorkerProcess]]:
    """A ``worker --role all`` and a ``worker --role gateway`` on a fresh store with
    ``config_text`` (the joiner's window ``join_window_ms``): the store, the config
    file and the two processes."""
    store = tmp_path / "store"
    config = tmp_path / "models.toml"
    config.write_text(config_text)
    env = worker_env(
        sandbox,
        app_id=f"{sandbox.group_id}-all",
        store=store,
        DRIFTLOOP_REDIS_KEY_PREFIX=sandbox.redis.key_prefix,
        DRIFTLOOP_WORKER_MODELS=str(config),
        DRIFTLOOP_JOIN_WINDOW_MS=str(join_window_ms),
        DRIFTLOOP_JOIN_GRACE_MS="1000",
    )
    worker = WorkerProcess("all", env, tmp_path / "worker.log", config=config)
    gateway_env = {"DRIFTLOOP_WORKER_APP_ID": f"{sandbox.group_id}-gateway", **gateway_env}
    gateway = WorkerProcess("gateway", env | gateway_env, tmp_path / "gateway.log", config=config)
    return store, config, [worker, gateway]


def _poisoned(sandbox: Sandbox, store: Path, config_text: str) -> CheckpointEvent:
    """A checkpoint of the model trained on inverted labels, written through the
    real signing checkpointer (it verifies: only its figures are bad); its save's
    GC keeps what the sandbox's pointer references."""
    config = parse_config(tomllib.loads(config_text)).model(MODEL)
    pairs = [(f, label) for _, f, label in itertools.islice(_pairs(99, held_out=False), 600)]
    store_config = StoreConfig(root=store, fsync=False)
    references = references_from_env(
        store_config, sandbox.redis, kafka=sandbox.kafka, topics=sandbox.topics
    )
    return write_poisoned(store_config, config, pairs, references=references)


def test_gateway_promotes_refuses_a_poisoned_checkpoint_and_the_guard_rolls_it_back(
    sandbox: Sandbox,
    tmp_path: Path,
    started: list[WorkerProcess],
    redis_client: redis.Redis[str],
) -> None:
    metrics_port = free_port()
    store, config, procs = start_loop(
        sandbox, tmp_path, CONFIG, DRIFTLOOP_WORKER_METRICS_PORT=str(metrics_port)
    )
    started += procs
    verdicts = Topic(sandbox, sandbox.topics.verdicts, Verdict)
    audit = Topic(sandbox, sandbox.topics.version_events, VersionEvent)
    key = pointer_key(sandbox.redis.key_prefix, MODEL)
    try:
        # 1. the trainer's checkpoints, promoted by the gateway alone
        _send(sandbox, _pairs(1), 1500)

        def judged_promotion() -> list[Verdict]:
            return [
                v
                for v in verdicts.poll()
                if v.decision == "promote" and v.baseline_version is not None
            ]

        promoted = _wait(judged_promotion, "a promotion judged against live", procs)[0]
        assert promoted.judge == "gateway"
        assert promoted.policy == "auto"
        assert promoted.n >= MIN_EXAMPLES
        assert promoted.metric == "accuracy"
        assert promoted.candidate is not None
        assert promoted.baseline is not None
        assert promoted.difference is not None
        assert promoted.difference >= -0.05
        assert promoted.epoch is not None
        bootstrap = next(v for v in verdicts.seen if v.decision == "promote")
        assert bootstrap.baseline_version is None  # nothing was live: the first one passed
        live = _wait(lambda: redis_client.hget(key, "live"), "a live version", procs)
        assert live is not None

        # 2. a poisoned candidate is refused for its figures
        offered = _poisoned(sandbox, store, CONFIG)
        poisoned = offered.version
        produce(sandbox, sandbox.topics.checkpoint_events, [(MODEL.encode(), encode(offered))])
        held = _pairs(2, held_out=True)
        _send(sandbox, held, 40)
        rejected = _wait(
            lambda: [v for v in verdicts.poll() if v.version == poisoned], "its verdict", procs
        )[0]
        assert rejected.decision == "reject", rejected
        assert rejected.checks, rejected
        assert all(rejected.checks.values()), rejected.checks
        assert rejected.difference is not None
        assert rejected.difference < -0.05
        assert redis_client.hget(key, "live") != poisoned

        # 3. forced live by an operator, rolled back by the guard
        ops = server_env(sandbox, store, sandbox.stack.redis_url) | {
            "DRIFTLOOP_WORKER_MODELS": str(config)
        }
        done = cli(ops, "promote", MODEL, poisoned, "--reason", "forced", "--actor", "ops")
        assert done.code == 0, done.stderr
        replaced = redis_client.hget(key, "previous")

        # a few held-out requests at a time, as traffic would come, until the guard acts
        def rollbacks() -> list[Verdict]:
            return [v for v in verdicts.poll() if v.decision == "rollback"]

        sent = 0
        while not rollbacks() and sent < 4 * GUARD_MIN:
            _send(sandbox, held, 10)
            sent += 10
            deadline = time.monotonic() + 5
            while not rollbacks() and time.monotonic() < deadline:
                time.sleep(0.2)
        rollback = _wait(rollbacks, "the guard's rollback", procs)
        verdict = rollback[0]
        assert verdict.judge == "guard"
        assert verdict.version == poisoned
        assert verdict.baseline_version == replaced
        assert GUARD_MIN <= verdict.n <= 2 * GUARD_MIN, verdict
        assert verdict.difference is not None
        assert verdict.difference < -0.1
        assert redis_client.hget(key, "live") == replaced
        trail = _wait(
            lambda: [e for e in audit.poll() if e.action == "rollback" and e.actor == "guard"],
            "the rollback in version-events",
            procs,
        )
        assert trail[0].from_live == poisoned
        assert "accuracy" in trail[0].reason
        forced = [e for e in audit.seen if e.actor == "ops"]
        assert forced
        assert forced[0].live == poisoned
        assert forced[0].reason == "forced"
        # the gateway never offers it again
        assert not [v for v in verdicts.poll() if v.version == poisoned and v.decision == "promote"]

        # its figures: Prometheus at /metrics, per-version live metrics in Redis for status
        def exported() -> str:
            text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
            return text if 'decision="rollback"} 1' in text else ""

        text = _wait(exported, "the rollback in /metrics", procs)
        assert f'driftloop_gateway_verdicts_total{{model="{MODEL}",decision="reject"}}' in text
        assert "driftloop_live_examples_total" in text
        status = _wait(
            lambda: cli(ops, "status", MODEL, "--json").json()["models"][0].get("live_metrics"),
            "live metrics in status",
            procs,
        )
        assert status["unknown"]["routes"]["live"]["n"] > 0
    finally:
        verdicts.close()
        audit.close()
