"""The demo: the whole loop on the embedded stack, shown live.

:func:`run_demo` starts a Tansu broker and a Redis (:class:`EmbeddedStack`),
a ``driftloop worker`` process running the attribution joiner and the online
trainer, a ``driftloop worker --role gateway`` process running the
validation gateway and the guard, and two ``driftloop serve`` model servers
(:mod:`services.demo.servers`) on the same store, read-only. Then it plays
synthetic production traffic (:mod:`services.demo.traffic`, carried out by
:mod:`services.demo.driver`):

1. **Bootstrap.** No version is live yet, so the servers answer 503. The
   first ``warmup`` requests (enough for the first count checkpoint) have
   their inference logs written straight to ``inference-logs``; their
   feedback goes out as usual (to the topic while the servers are still
   starting). The gateway promotes the trainer's first checkpoint (nothing
   is live to compare it with); once both servers have applied it, the demo
   opens the gate.
2. **Serving.** Every further request is a real HTTP predict call (batches,
   alternating between the servers), which log the inference logs
   themselves; feedback goes half through ``POST /v1/feedback``, half
   straight to the ``feedback`` topic. New requests wait while more than
   ``max_lead`` of those sent are not joined yet (back-pressure).
3. **The gateway.** A ``holdout_percent`` share of requests is never
   learned; the gateway scores each new checkpoint and the live version on
   the same held-out examples and promotes it when it is not worse (policy
   ``auto``), with a verdict carrying the figures. The demo promotes nothing.
4. **A poisoned checkpoint and the guard.** Once the gateway has made
   ``poison_after`` promotions that both servers apply, the guard has kept
   the live version with a good score (and, with a drift in the traffic,
   well after it), the demo writes a checkpoint trained on
   inverted labels through the signing checkpointer
   (:mod:`services.demo.poison`) and offers it on ``checkpoint-events``. The
   gateway rejects it for its figures; the demo then forces it live as an
   operator would (``driftloop promote``, actor ``operator``), and the guard
   rolls it back once it has scored it against the version it replaced on
   ``guard.min_examples`` held-out requests.
5. **Settling.** When the traffic is spent and the loop has caught up, the
   demo stops the gateway, waits until both servers report the pointer's
   final epoch, stops them (they flush their inference logs), lets the loop
   catch up again, stops the worker (SIGTERM: a ``shutdown`` checkpoint) and
   prints a summary.

Every process it started is stopped on the way out, including on Ctrl-C;
children die with the demo even when it is killed (``PR_SET_PDEATHSIG``).

The worker signs its checkpoints: unless ``DRIFTLOOP_STORE_SIGNING_KEY`` or
``_SIGNING_KEY_FILE`` names a key, the demo uses the embedded default key
(:func:`~services.checkpoints.signing.ensure_default_key`, generated in
``DRIFTLOOP_STORE_KEY_DIR`` on first use) and hands its path to the worker,
whose public key the servers, the gateway and the demo's own version check trust.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from rich.console import Console
from rich.live import Live

from schemas.codec import decode
from schemas.errors import ConfigError, DriftloopError, SchemaError, StackError
from schemas.events import CheckpointEvent, DeadLetter, TrainingExample, Verdict, VersionEvent
from services.checkpoints.config import StoreConfig
from services.checkpoints.signing import ensure_default_key
from services.config import KafkaConfig, TopicsConfig
from services.demo.driver import TrafficDriver
from services.demo.poison import PoisonPlay
from services.demo.promoter import DemoPromoter
from services.demo.servers import DemoServer
from services.demo.traffic import TrafficConfig, plan
from services.demo.view import DemoView
from services.kafka import high_watermarks, make_admin, make_consumer, make_producer
from services.learning.config import ModelConfig, example_path, load_config
from services.publish.feedback import FeedbackProducer
from services.stack import EmbeddedStack, StackInfo
from services.stack.process import ChildProcess


@dataclass(frozen=True)
class DemoOptions:
    """Knobs of one demo run."""

    model_config: str = "river_logreg"
    traffic: TrafficConfig = field(default_factory=TrafficConfig)
    store: Path | None = None
    window_ms: int = 6_000
    grace_ms: int = 2_000
    checkpoint_every: int = 1_000
    partitions: int = 3
    settle_timeout_s: float = 120.0
    servers: int = 2
    max_lead: int = 1_000
    """Back-pressure: new requests wait while more than this many sent requests
    are not joined yet (on a busy machine the worker falls behind the traffic;
    without it, promotions would come after the traffic has ended)."""
    poison_after: int = 2
    """Offer the poisoned checkpoint after this many promotions by the gateway
    (both servers serving the last)."""
    holdout_percent: float = 20.0
    """The model's holdout share in the demo (never learned; the gateway's and guard's examples)."""
    judge_examples: int = 50
    """``promotion.min_examples`` and ``guard.min_examples`` in the demo; the
    holdout buffer keeps twice as many, so that after the drift the gateway
    judges on the new concept soon."""
    policy: Literal["auto", "canary"] = "canary"
    """The gateway's promotion policy in the demo: ``canary`` sets each candidate
    that passed on the holdout as canary at ``canary_percent`` first and promotes
    it on ``judge_examples`` canary-route examples; ``auto`` promotes at once."""
    canary_percent: float = 25.0


#: The guard's cooldown after a rollback in the demo (the gateway promotes
#: nothing meanwhile): short, so the demo shows promotions resuming.
COOLDOWN_S = 5.0
#: ``--server-id`` of the demo's model servers.
SERVER_IDS = ("serve-a", "serve-b", "serve-c", "serve-d")

#: Seconds between the demo's reads of its output, server polls and redraws.
REFRESH_S = 0.25


def _worker_env(info: StackInfo, options: DemoOptions, store: Path) -> dict[str, str]:
    env = dict(os.environ) | info.env()
    env |= {
        "DRIFTLOOP_STORE_ROOT": str(store),
        "DRIFTLOOP_JOIN_WINDOW_MS": str(options.window_ms),
        "DRIFTLOOP_JOIN_GRACE_MS": str(options.grace_ms),
        "DRIFTLOOP_JOIN_NO_FEEDBACK_POLICY": "drop",
        "DRIFTLOOP_JOIN_FEEDBACK_POLICY": "first",
        "PYTHONUNBUFFERED": "1",
    }
    return env | _signing_env(store)


def _signing_env(store: Path) -> dict[str, str]:
    """The key setting the worker needs: the embedded default's file unless one is set."""
    config = ensure_default_key(StoreConfig(root=store))
    if config.signing_key is None and config.signing_key_file is not None:
        return {"DRIFTLOOP_STORE_SIGNING_KEY_FILE": str(config.signing_key_file)}
    return {}  # DRIFTLOOP_STORE_SIGNING_KEY is in the environment the worker inherits


def _demo_model_config(options: DemoOptions, workdir: Path) -> tuple[Path, str]:
    """The example model config with the demo's settings, and its model name.

    The shipped file is copied with ``every_n`` set to ``checkpoint_every``
    (and the adaptive floor ``min_every_n`` kept below it), the promotion
    policy ``auto`` with the demo's holdout share and judging sample, and
    the guard on, then validated here, so a bad edit fails before any
    process starts.
    """
    source = example_path(options.model_config)
    every = options.checkpoint_every
    text = re.sub(r"(?m)^every_n\s*=\s*\d+", f"every_n = {every}", source.read_text())
    text = re.sub(
        r"min_every_n\s*=\s*(\d+)",
        lambda m: f"min_every_n = {min(int(m.group(1)), max(1, every // 2))}",
        text,
    )
    judge = options.judge_examples
    # the demo's gateway promotes (through a canary by default) and its guard
    # watches, whatever the example says
    text = re.sub(r'(?m)^mode\s*=\s*"\w+"', f'mode = "{options.policy}"', text)
    for key, value in (
        ("canary_percent", options.canary_percent),
        ("canary_examples", judge),
    ):
        if not re.search(rf"(?m)^{key}\s*=", text):
            text = text.replace("[model.promotion]\n", f"[model.promotion]\n{key} = 0\n", 1)
        text = re.sub(rf"(?m)^{key}\s*=\s*[\d.]+", f"{key} = {value}", text)
    if "[model.guard]" not in text:
        text += f"\n[model.guard]\nenabled = true\nmin_examples = {judge}\n"
    text = re.sub(r"(?m)^enabled\s*=\s*false", "enabled = true", text)
    text = re.sub(r"(?m)^min_examples\s*=\s*\d+", f"min_examples = {judge}", text)
    text = re.sub(r"(?m)^cooldown_s\s*=\s*[\d.]+", f"cooldown_s = {COOLDOWN_S}", text)
    if not re.search(r"(?m)^holdout_size\s*=", text):
        text = text.replace("[model.promotion]\n", "[model.promotion]\nholdout_size = 0\n", 1)
    text = re.sub(r"(?m)^holdout_size\s*=\s*\d+", f"holdout_size = {2 * judge}", text)
    text = re.sub(
        r"(?m)^holdout_percent\s*=\s*[\d.]+", f"holdout_percent = {options.holdout_percent}", text
    )
    path = workdir / source.name
    path.write_text(text)
    model = load_config(path).models[0]
    wanted = (
        every,
        judge,
        2 * judge,
        judge,
        options.holdout_percent,
        options.policy,
        True,
        options.canary_percent,
        judge,
    )
    got = (
        model.triggers.every_n,
        model.promotion.min_examples,
        model.promotion.holdout_size,
        model.guard.min_examples,
        model.promotion.holdout_percent,
        model.promotion.mode,
        model.guard.enabled,
        model.promotion.canary_percent,
        model.promotion.canary_examples,
    )
    if got != wanted:
        raise ConfigError(
            "the example does not take the demo's settings (count interval, judging sample,"
            " holdout, promotion policy, guard on, canary share and sample)",
            path=str(source),
            wanted=wanted,
            got=got,
        )
    return path, model.name


def _start_worker(
    env: dict[str, str], config: Path, store: Path, log: Path, *, role: str = "all"
) -> ChildProcess:
    argv = [sys.executable, "-m", "services.cli", "worker", "--role", role]
    argv += ["--config", str(config), "--store", str(store)]
    name = "worker" if role == "all" else role
    return ChildProcess(name, argv, log, 0, stop_signal=signal.SIGTERM, env=env)


def _reader(kafka: KafkaConfig, topics: TopicsConfig) -> KafkaConsumer:
    consumer = make_consumer(kafka)
    names = [
        topics.training_examples,
        topics.dead_letters,
        topics.checkpoint_events,
        topics.version_events,
        topics.verdicts,
    ]
    partitions = [
        TopicPartition(name, p)
        for name in names
        for p in sorted(consumer.partitions_for_topic(name) or {0})
    ]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    return consumer


def _drain(consumer: KafkaConsumer, topics: TopicsConfig, view: DemoView, wait_ms: int) -> int:
    """Fold newly read records into ``view``; returns how many were read."""
    read = 0
    for tp, records in consumer.poll(timeout_ms=wait_ms).items():
        for record in records:
            read += 1
            try:
                if tp.topic == topics.training_examples:
                    view.add_example(decode(TrainingExample, record.value))
                elif tp.topic == topics.dead_letters:
                    view.add_dead_letter(decode(DeadLetter, record.value))
                elif tp.topic == topics.version_events:
                    view.add_change(decode(VersionEvent, record.value))
                elif tp.topic == topics.verdicts:
                    view.add_verdict(decode(Verdict, record.value))
                else:
                    view.add_checkpoint(decode(CheckpointEvent, record.value))
            except SchemaError:
                view.dead_letters["unreadable_output"] += 1
    return read


def _group_lag(kafka: KafkaConfig, topics: list[str], group: str) -> int:
    """Records of ``topics`` that consumer ``group`` has not committed yet.

    The high watermarks come from fetches (:func:`high_watermarks`), not
    from ``end_offsets``, which the embedded broker undercounts.
    """
    ends = high_watermarks(kafka, topics)
    admin = make_admin(kafka)
    try:
        committed = admin.list_group_offsets({group: list(ends)}).get(group, {})
    finally:
        admin.close()
    lag = 0
    for tp, end in ends.items():
        meta = committed.get(tp)
        position = meta.offset if meta is not None and meta.offset >= 0 else 0
        lag += max(0, end - position)
    return lag


def _read_to_end(
    consumer: KafkaConsumer, kafka: KafkaConfig, topics: TopicsConfig, view: DemoView
) -> None:
    """Drain the output topics up to their high watermarks as of now."""
    ends = high_watermarks(
        kafka,
        [
            topics.training_examples,
            topics.dead_letters,
            topics.checkpoint_events,
            topics.version_events,
            topics.verdicts,
        ],
    )
    deadline = time.monotonic() + 30.0
    while any(consumer.position(tp) < end for tp, end in ends.items()):
        if time.monotonic() > deadline:
            raise StackError("could not read the demo's output to its end", timeout_s=30.0)
        _drain(consumer, topics, view, 200)


@contextlib.contextmanager
def _live(console: Console, view: DemoView, quiet: bool) -> Iterator[Live | None]:
    if quiet or not console.is_terminal:
        yield None
        return
    with Live(view.render(), console=console, refresh_per_second=4, transient=False) as live:
        yield live


class _Demo:
    """One run's moving parts, and the decisions made between traffic steps."""

    def __init__(
        self,
        options: DemoOptions,
        view: DemoView,
        *,
        model: ModelConfig,
        info: StackInfo,
        workers: list[ChildProcess],
        servers: list[DemoServer],
        consumer: KafkaConsumer,
        producer: KafkaProducer,
        promoter: DemoPromoter,
        store: StoreConfig,
        left: Callable[[], int],
        live: Live | None,
    ) -> None:
        self.options = options
        self.view = view
        self.config = model
        self.model = model.name
        self.info = info
        self.workers = workers
        self.servers = servers
        self.consumer = consumer
        self.producer = producer
        self.promoter = promoter
        self.store = store
        self.left = left
        """How many requests of the traffic are still to be sent."""
        self.poison = PoisonPlay(
            model,
            options.traffic,
            poison_after=options.poison_after,
            store=store,
            producer=producer,
            topic=info.topics.checkpoint_events,
            promoter=promoter,
        )
        self.live = live
        self._next_refresh = 0.0
        self.traffic_done = False

    def refresh(self, wait_ms: int = 0, *, force: bool = False) -> int:
        """Read new output, poll the servers, play the poisoned checkpoint, redraw.

        Returns how many records were read. Cheap to call often: the work is
        done at most every :data:`REFRESH_S` unless ``force``.
        """
        now = time.monotonic()
        if not force and now < self._next_refresh:
            return 0
        self._next_refresh = now + REFRESH_S
        read = _drain(self.consumer, self.info.topics, self.view, wait_ms)
        for worker in self.workers:
            code = worker.exit_code()
            if code is not None:
                raise DriftloopError(
                    f"the {worker.name} stopped unexpectedly",
                    exit_code=code,
                    log=worker.output_tail(),
                )
        for server in self.servers:
            server.poll_status()
        self.poison.step(self.view, self.left())
        if self.live is not None:
            self.live.update(self.view.render())
        return read

    def wait_for(self, done: Callable[[], bool], what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not done():
            if time.monotonic() > deadline:
                raise StackError(
                    f"timed out waiting for {what}",
                    timeout_s=timeout_s,
                    worker_log=self.workers[0].output_tail(8),
                    **{s.server_id: s.process.output_tail(8) for s in self.servers},
                )
            self.refresh(200, force=True)

    def catch_up(self) -> None:
        """Until the worker (and the gateway, while it runs) has read every input
        and nothing new came out for a while."""
        topics = self.info.topics
        prefix = topics.prefix  # the workers' faust app ids: <prefix>driftloop-<role>
        groups = [
            (
                f"{prefix}driftloop-all",
                [topics.inference_logs, topics.feedback, topics.training_examples],
            )
        ]
        if any(w.name == "gateway" for w in self.workers):
            groups.append(
                (f"{prefix}driftloop-gateway", [topics.training_examples, topics.checkpoint_events])
            )
        kafka = self.info.kafka_config()
        quiet_since = time.monotonic()
        deadline = time.monotonic() + self.options.settle_timeout_s
        while True:
            if self.refresh(500, force=True):
                quiet_since = time.monotonic()
            idle = time.monotonic() - quiet_since > 3.0
            if idle and all(_group_lag(kafka, inputs, group) == 0 for group, inputs in groups):
                return
            if time.monotonic() > deadline:
                raise StackError(
                    "the loop did not catch up in time",
                    timeout_s=self.options.settle_timeout_s,
                    log=self.workers[0].output_tail(),
                )


def _check_timing(options: DemoOptions) -> None:
    """The traffic's delays must suit the demo joiner's window (see TrafficConfig)."""
    t = options.traffic
    window, grace = options.window_ms, options.grace_ms
    if not window < t.late_after_ms <= 2 * window + grace - 2_000:
        raise ConfigError(
            "late feedback must come after the join window and well within its memory",
            late_after_ms=t.late_after_ms,
            window_ms=window,
            grace_ms=grace,
        )
    if t.feedback_delay_ms[1] * 2 >= window:
        raise ConfigError(
            "feedback delays must be well inside the join window",
            feedback_delay_ms=t.feedback_delay_ms,
            window_ms=window,
        )


def warmup_requests(options: DemoOptions) -> int:
    """Bootstrap requests: enough joined examples for the first count checkpoint.

    About 95% of requests become examples (missing and late feedback do not),
    the held-out share (``holdout_percent``) is never learned, and the trainer
    checkpoints at micro-batch (32) boundaries. A quarter more than the
    interval over the learned share, plus two micro-batches, covers all three.

    Raises
    ------
    ConfigError
        The bootstrap would take more than half of the traffic.
    """
    learned = 1 - options.holdout_percent / 100
    wanted = int(options.checkpoint_every * 1.25 / learned) + 64
    if wanted > options.traffic.requests // 2:
        raise ConfigError(
            "too few requests for the checkpoint interval: the bootstrap alone needs"
            f" {wanted} and must be at most half of them (raise --requests or lower"
            " --checkpoint-every)",
            requests=options.traffic.requests,
            checkpoint_every=options.checkpoint_every,
        )
    return wanted


def run_demo(options: DemoOptions, console: Console, *, quiet: bool = False) -> dict[str, Any]:
    """Run the demo end to end and return its summary (see :meth:`DemoView.summary`).

    Raises
    ------
    DriftloopError
        A server or the worker could not start or stopped, a pointer change
        was refused, or the loop did not settle within
        ``options.settle_timeout_s``.
    """

    def say(message: str) -> None:
        if not quiet:
            console.log(message)

    _check_timing(options)
    warmup = warmup_requests(options)
    with contextlib.ExitStack() as exit_stack:
        workdir = Path(exit_stack.enter_context(tempfile.TemporaryDirectory(prefix="driftloop-")))
        store = options.store or workdir / "checkpoints"
        store.mkdir(parents=True, exist_ok=True)  # the servers open it before the first commit
        config_path, model = _demo_model_config(options, workdir)
        if model != options.traffic.model:
            options = replace(options, traffic=replace(options.traffic, model=model))
        requests, traffic = plan(options.traffic)
        view = DemoView(traffic=traffic)
        view.enter("starting broker and Redis")
        info = exit_stack.enter_context(
            EmbeddedStack(topics=TopicsConfig(partitions=options.partitions))
        )
        say(f"broker {info.bootstrap}, redis {info.describe()['redis_url']}")
        kafka = info.kafka_config()
        env = _worker_env(info, options, store)
        worker = _start_worker(env, config_path, store, workdir / "worker.log")
        exit_stack.callback(worker.stop, 30.0)
        say(f"worker pid {worker.pid}: joiner + trainer for {model!r}, store {store}")
        gateway = _start_worker(env, config_path, store, workdir / "gateway.log", role="gateway")
        exit_stack.callback(gateway.stop, 30.0)
        say(f"gateway pid {gateway.pid}: validation gateway + guard for {model!r}")
        servers: list[DemoServer] = []
        for name in SERVER_IDS[: options.servers]:
            server = DemoServer(
                name, model=model, config=config_path, store=store, env=env, workdir=workdir
            )
            exit_stack.callback(server.stop)
            servers.append(server)
            say(f"model server {name!r} pid {server.process.pid} on port {server.stats.port}")
        view.servers = [s.stats for s in servers]
        consumer = _reader(kafka, info.topics)
        exit_stack.callback(consumer.close)
        producer = make_producer(kafka, linger_ms=5)
        exit_stack.callback(producer.close)
        feedback = FeedbackProducer(kafka, info.topics)
        exit_stack.callback(feedback.close)
        store_config = ensure_default_key(StoreConfig(root=store))
        promoter = DemoPromoter(
            store_config,
            load_config(config_path),
            redis=info.redis_config(),
            kafka=kafka,
            topics=info.topics,
        )
        driver = TrafficDriver(
            requests,
            options.traffic,
            servers=servers,
            producer=producer,
            feedback=feedback,
            topics=info.topics,
            warmup=warmup,
        )
        view.sent = driver.sent
        with _live(console, view, quiet) as live:
            demo = _Demo(
                options,
                view,
                model=load_config(config_path).model(model),
                info=info,
                workers=[worker, gateway],
                servers=servers,
                consumer=consumer,
                producer=producer,
                promoter=promoter,
                store=store_config,
                left=lambda: len(requests) - driver.sent.warmup_logs - driver.sent.predicted,
                live=live,
            )
            view.enter(f"bootstrap: {warmup:,} inference logs straight to the topic")
            driver.http_feedback = False  # until both servers answer
            gate_deadline: float | None = None
            next_health = 0.0
            while not driver.done:
                sent = driver.sent.warmup_logs + driver.sent.predicted
                driver.paused = sent - view.examples > options.max_lead
                driver.step()
                demo.refresh()
                if not driver.http_feedback and time.monotonic() >= next_health:
                    driver.http_feedback = all(s.healthy() for s in servers)
                    next_health = time.monotonic() + REFRESH_S
                if not driver.gate_open:
                    if view.promotions and view.converged:
                        driver.open_gate()
                        view.enter("serving: predict and feedback over HTTP, feedback to topic")
                    elif driver.warmup_sent:
                        if gate_deadline is None:
                            gate_deadline = time.monotonic() + options.settle_timeout_s
                            view.enter("bootstrap: waiting for the gateway's first promotion")
                        elif time.monotonic() > gate_deadline:
                            raise StackError(
                                "the gateway promoted no checkpoint that both servers served"
                                " after the bootstrap",
                                timeout_s=options.settle_timeout_s,
                                log=worker.output_tail(),
                            )
                time.sleep(min(driver.next_due_in(), 0.02))
            demo.traffic_done = True
            view.enter("waiting for the loop to catch up")
            demo.catch_up()
            view.enter("stopping the gateway (the pointer stays as it is)")
            demo.workers.remove(gateway)
            gateway.stop(30.0)
            # whatever it changed is relayed: read version-events to its end
            _read_to_end(consumer, kafka, info.topics, view)
            view.enter("waiting for both servers to apply the final epoch")
            demo.wait_for(lambda: view.converged, "the servers' final epoch", 60.0)
            view.enter("stopping the model servers (they flush their logs)")
            demo.refresh(force=True)
            final = {s.server_id: (s.stats.live, s.stats.epoch) for s in servers}
            for server in servers:
                server.stop()
            view.enter("waiting for the loop to catch up")
            demo.catch_up()
            view.enter("stopping the worker (shutdown checkpoint)")
            demo.refresh(force=True)
            worker.stop(30.0)
            # The worker has exited, so whatever it published (the shutdown
            # checkpoint's event included) is in the log: read up to the end.
            _read_to_end(consumer, kafka, info.topics, view)
            demo.poison.step(view, 0)  # the guard's verdict may have come last
            view.enter("done")
            if live is not None:
                live.update(view.render())
        summary = view.summary()
        for entry in summary["servers"]:
            entry["live"], entry["applied_epoch"] = final[entry["server"]]
        summary["processes"] = (
            info.pids
            | {"worker": worker.pid, "gateway": gateway.pid}
            | {s.server_id: s.process.pid for s in servers}
        )
        summary["store"] = str(store) if options.store else None
        summary["model"] = model
        summary["bootstrap_requests"] = warmup
        return summary
