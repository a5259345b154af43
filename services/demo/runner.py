"""The demo: the whole learning loop on the embedded stack, shown live.

:func:`run_demo` starts a Tansu broker and a Redis (:class:`EmbeddedStack`),
a ``driftloop worker`` process running the attribution joiner and the online
trainer, then writes synthetic production traffic (:mod:`services.demo.traffic`)
and reads back what the loop makes of it: training examples, dead letters and
checkpoint events. When the traffic is spent and the trainer has caught up, the
worker gets SIGTERM (it takes a ``shutdown`` checkpoint) and the demo prints a
summary. Every process it started is stopped on the way out, including on
Ctrl-C; children die with the demo even when it is killed (``PR_SET_PDEATHSIG``).

The worker signs its checkpoints: unless ``DRIFTLOOP_STORE_SIGNING_KEY`` or
``_SIGNING_KEY_FILE`` names a key, the demo uses the embedded default key
(:func:`~services.checkpoints.signing.ensure_default_key`, generated in
``DRIFTLOOP_STORE_KEY_DIR`` on first use) and hands its path to the worker.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from rich.console import Console
from rich.live import Live

from schemas.codec import decode
from schemas.errors import ConfigError, DriftloopError, SchemaError, StackError
from schemas.events import CheckpointEvent, DeadLetter, TrainingExample
from services.checkpoints.config import StoreConfig
from services.checkpoints.signing import ensure_default_key
from services.config import KafkaConfig, TopicsConfig
from services.demo.traffic import TrafficConfig, generate
from services.demo.view import DemoView
from services.kafka import high_watermarks, make_admin, make_consumer, make_producer
from services.learning.config import example_path, load_config
from services.stack import EmbeddedStack, StackInfo
from services.stack.process import ChildProcess


@dataclass(frozen=True)
class DemoOptions:
    """Knobs of one demo run."""

    model_config: str = "river_logreg"
    traffic: TrafficConfig = field(default_factory=TrafficConfig)
    store: Path | None = None
    window_ms: int = 30_000
    grace_ms: int = 2_000
    checkpoint_every: int = 1_000
    partitions: int = 3
    settle_timeout_s: float = 120.0


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
    """The example model config with the demo's count interval, and its model name.

    The shipped file is copied with ``every_n`` set to ``checkpoint_every``
    (and the adaptive floor ``min_every_n`` kept below it), then validated
    here, so a bad edit fails before any process starts.
    """
    source = example_path(options.model_config)
    every = options.checkpoint_every
    text = re.sub(r"(?m)^every_n\s*=\s*\d+", f"every_n = {every}", source.read_text())
    text = re.sub(
        r"min_every_n\s*=\s*(\d+)",
        lambda m: f"min_every_n = {min(int(m.group(1)), max(1, every // 2))}",
        text,
    )
    path = workdir / source.name
    path.write_text(text)
    model = load_config(path).models[0]
    if model.triggers.every_n != every:
        raise ConfigError(
            "could not set the demo's checkpoint interval", path=str(source), every_n=every
        )
    return path, model.name


def _start_worker(env: dict[str, str], config: Path, store: Path, log: Path) -> ChildProcess:
    argv = [
        sys.executable,
        "-m",
        "services.cli",
        "worker",
        "--role",
        "all",
        "--config",
        str(config),
        "--store",
        str(store),
    ]
    return ChildProcess("worker", argv, log, 0, stop_signal=signal.SIGTERM, env=env)


def _reader(kafka: KafkaConfig, topics: TopicsConfig) -> KafkaConsumer:
    consumer = make_consumer(kafka)
    names = [topics.training_examples, topics.dead_letters, topics.checkpoint_events]
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
        kafka, [topics.training_examples, topics.dead_letters, topics.checkpoint_events]
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


def run_demo(options: DemoOptions, console: Console, *, quiet: bool = False) -> dict[str, Any]:
    """Run the demo end to end and return its summary (see :meth:`DemoView.summary`).

    Raises
    ------
    DriftloopError
        A server or the worker could not start, or the loop did not settle
        within ``options.settle_timeout_s``.
    """
    records, traffic = generate(options.traffic)
    view = DemoView(traffic=traffic)

    def say(message: str) -> None:
        if not quiet:
            console.log(message)

    with contextlib.ExitStack() as exit_stack:
        workdir = Path(exit_stack.enter_context(tempfile.TemporaryDirectory(prefix="driftloop-")))
        store = options.store or workdir / "checkpoints"
        config_path, model = _demo_model_config(options, workdir)
        if model != options.traffic.model:
            options = replace(options, traffic=replace(options.traffic, model=model))
            records, traffic = generate(options.traffic)
            view = DemoView(traffic=traffic)
        view.phase = "starting broker and Redis"
        info = exit_stack.enter_context(
            EmbeddedStack(topics=TopicsConfig(partitions=options.partitions))
        )
        say(f"broker {info.bootstrap}, redis {info.describe()['redis_url']}")
        kafka = info.kafka_config()
        env = _worker_env(info, options, store)
        worker = _start_worker(env, config_path, store, workdir / "worker.log")
        exit_stack.callback(worker.stop, 30.0)
        say(f"worker pid {worker.pid}: joiner + trainer for {model!r}, store {store}")
        consumer = _reader(kafka, info.topics)
        exit_stack.callback(consumer.close)
        producer = make_producer(kafka, linger_ms=5)
        exit_stack.callback(producer.close)
        with _live(console, view, quiet) as live:

            def refresh(wait_ms: int = 0) -> None:
                _drain(consumer, info.topics, view, wait_ms)
                if worker.exit_code() is not None:
                    raise DriftloopError(
                        "the worker stopped unexpectedly",
                        exit_code=worker.exit_code(),
                        log=worker.output_tail(),
                    )
                if live is not None:
                    live.update(view.render())

            view.phase = "sending traffic"
            for i, record in enumerate(records):
                producer.send(info.topics.name(record.topic), key=record.key, value=record.value)
                view.produced += 1
                if i % 500 == 0:
                    producer.flush()
                    refresh()
            producer.flush()
            view.phase = "waiting for the loop to catch up"
            deadline = time.monotonic() + options.settle_timeout_s
            group = f"{info.topics.prefix}driftloop-all"  # the worker's faust app id
            topics = info.topics
            inputs = [topics.inference_logs, topics.feedback, topics.training_examples]
            quiet_since = time.monotonic()
            while True:
                if _drain(consumer, info.topics, view, 500):
                    quiet_since = time.monotonic()
                refresh()
                idle = time.monotonic() - quiet_since > 3.0
                if idle and _group_lag(kafka, inputs, group) == 0:
                    break
                if time.monotonic() > deadline:
                    raise StackError(
                        "the loop did not catch up in time",
                        timeout_s=options.settle_timeout_s,
                        log=worker.output_tail(),
                    )
            view.phase = "stopping the worker (shutdown checkpoint)"
            refresh()
            worker.stop(30.0)
            # The worker has exited, so whatever it published (the shutdown
            # checkpoint's event included) is in the log: read up to the end.
            _read_to_end(consumer, kafka, info.topics, view)
            view.phase = "done"
            if live is not None:
                live.update(view.render())
        summary = view.summary()
        summary["processes"] = info.pids | {"worker": worker.pid}
        summary["store"] = str(store) if options.store else None
        summary["model"] = model
        return summary
