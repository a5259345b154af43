"""Operators steer a running trainer: SIGUSR1 asks for a checkpoint now (trigger
``manual``), SIGHUP reloads the model configuration and checkpoints under the
old settings before the new ones apply (trigger ``config_change``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from schemas.codec import encode
from schemas.events import CheckpointEvent
from tests.integration.test_exactly_once import make_examples
from tests.integration.test_trainer_agent import events, model_config, read_until, send

if TYPE_CHECKING:
    from tests.integration.conftest import Sandbox

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "sig-logreg"


def wait_for(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


def test_sigusr1_checkpoints_now_and_sighup_applies_new_settings_after_a_checkpoint(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    config = tmp_path / "models.toml"
    config.write_text(model_config(MODEL, every_n=10_000))  # no count checkpoint in this test
    examples = make_examples(MODEL, 90)
    topic = sandbox.topics.training_examples

    def produce(start: int, stop: int) -> None:
        send(sandbox, topic, [(MODEL.encode(), encode(e)) for e in examples[start:stop]])

    env = dict(os.environ) | sandbox.stack.env()
    env |= {
        "DRIFTLOOP_TOPIC_PREFIX": sandbox.topics.prefix,
        "DRIFTLOOP_TOPIC_PARTITIONS": str(sandbox.topics.partitions),
        "DRIFTLOOP_WORKER_APP_ID": f"sig-{sandbox.name}",
    }
    argv = [sys.executable, "-m", "services.cli", "worker", "--role", "trainer"]
    argv += ["--config", str(config), "--store", str(tmp_path / "store")]
    log_path = tmp_path / "worker.log"

    def published_until(done: Callable[[list[CheckpointEvent]], bool]) -> list[CheckpointEvent]:
        values = read_until(sandbox, sandbox.topics.checkpoint_events, lambda v: done(events(v)))
        return events(values)

    with log_path.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            produce(0, 40)
            wait_for(lambda: f"model {MODEL}: learning" in log_path.read_text(errors="replace"))
            proc.send_signal(signal.SIGUSR1)
            published = published_until(lambda es: any(e.trigger == "manual" for e in es))

            config.write_text(model_config(MODEL, every_n=20))  # a new setting
            proc.send_signal(signal.SIGHUP)
            published = published_until(lambda es: any(e.trigger == "config_change" for e in es))
            produce(40, 90)
            published = published_until(lambda es: any(e.trigger == "count" for e in es))
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
    log_text = log_path.read_text(errors="replace")
    assert code == 0, log_text[-3000:]
    by_trigger = {e.trigger: e for e in published}
    assert set(by_trigger) >= {"manual", "config_change", "count"}, log_text[-3000:]
    manual, change, count = (by_trigger[t] for t in ("manual", "config_change", "count"))
    # Checkpoints are taken at batch boundaries (batch size 10), in order.
    assert 0 < manual.examples_seen <= 40
    assert manual.examples_seen % 10 == 0
    assert manual.version < change.version < count.version
    # The old settings (every_n=10,000) would never have fired a count checkpoint.
    assert count.examples_seen > change.examples_seen
