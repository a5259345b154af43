"""kill -9 a whole ``driftloop worker --role all`` at random moments: nothing lost or invented.

Users run the joiner and the trainer in one process (``--role all``): one
faust app, one consumer group, one consumer thread for ``inference-logs``,
``feedback``, the joiner's changelog and ``training-examples``. Here such a
worker is killed with SIGKILL at >= 6 random moments (while it starts, while
it recovers its table and restores its models, while it joins and trains a
slice of the input, between its sends and its offset commits) and restarted
each time in the same consumer group, on the same checkpoint store; while the
last one works through the last slice, a second worker joins its group twice
and is killed, so it rebalances while it fetches. Models
checkpoint every few dozen examples, so restarts restore mid-stream
checkpoints and seek ``training-examples`` back to their offsets while the
joiner replays its uncommitted input.

The input is a synthetic stream with feedback (out of order, repeated,
superseded, missing, orphaned, undecodable), every event time inside one
attribution window, so which examples exist does not depend on how the
joiner interleaves its two input topics. The reference is a clean in-memory
join of the same records (:func:`tests.integration.test_joiner_kills.clean_run`).

It guards what an outside check found broken: a restarted worker crashed
with a ``KeyError`` in aiokafka's ``fetched_records`` right after the
trainer's seek (the seek ran outside faust's consumer thread), a restarted
trainer sought to offset 0 and then trained nothing (its seek was lost, so
every record it was handed lay past the offset it waited for), and examples
were lost after restarts. Asserted: the final checkpoint holds exactly the
clean run's examples (``example_digest``, ``examples_seen``); no dead letter
(``late`` / ``orphan``) for a request the clean run joined; no incarnation
crashed (no traceback in any log, and the last one exits 0 on SIGTERM); no
stall (the last incarnation commits all input and its trainer catches up
before a generous deadline; the times are printed). An invented example
always fails the test, and so does a lost pair, reported with the lost pairs,
their changelog history and the joiner's rewinds and skips (issue 9: across
kill -9 an input record was now and then committed but never joined, in 3 of 14
runs before the join table kept its own input offsets, see
``streams/joiner.py``).
"""

from __future__ import annotations

import base64
import json
import random
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from schemas.codec import decode
from schemas.events import DeadLetter, TrainingExample
from services.kafka import high_watermarks
from services.learning.pool import partition_of
from tests.integration._join_input import (
    InputShape,
    Record,
    rewinds_in,
    skipped_records_explain,
)
from tests.integration._join_input import make_records as make_join_input
from tests.integration._procs import (
    WorkerProcess,
    newest,
    produce,
    read_topic,
    wait_committed,
    worker_env,
)
from tests.integration.test_joiner_kills import (
    changelog_history,
    clean_pairs,
    clean_run,
    digest_of,
)

if TYPE_CHECKING:
    from tests.integration.conftest import Sandbox

MODEL = "wk-logreg"
BATCH = 10
EVERY_N = 128
REQUESTS = 2000
#: generous: a loaded 2-core machine; a stall waits for ever, not this long
DEADLINE_S = 150.0

MODEL_TOML = f"""
[[model]]
name = "{MODEL}"
kind = "river"
batch_size = {BATCH}
dedup_horizon = 100000
factory = {{ path = "river.linear_model.LogisticRegression" }}

[model.triggers]
every_n = {EVERY_N}
on_drift = false
on_shutdown = true

# no holdout: every joined example is learned, so the trainer's digest is the join's
[model.promotion]
holdout_percent = 0
"""


#: The input's shape (see :mod:`tests.integration._join_input`).
SHAPE = InputShape(
    model=MODEL,
    requests=REQUESTS,
    logged_twice_every=13,
    feedback_twice_every=5,
    orphans=10,
    junk=("inference", "feedback"),
)


def make_records(rng: random.Random) -> list[Record]:
    """The input, in the order it is produced (each request's records in one partition)."""
    return make_join_input(SHAPE, rng)


def dead_letters(sandbox: Sandbox) -> list[DeadLetter]:
    """Every dead letter written so far."""
    topic = sandbox.topics.dead_letters
    count = sum(high_watermarks(sandbox.kafka, [topic]).values())
    return [decode(DeadLetter, v) for v in read_topic(sandbox, topic, count)] if count else []


def request_of(letter: DeadLetter) -> str | None:
    """The request_id of the event a dead letter carries (None: not an event)."""
    try:
        value = json.loads(base64.b64decode(letter.value_b64))
    except ValueError:
        return None
    rid = value.get("request_id") if isinstance(value, dict) else None
    return rid if isinstance(rid, str) else None


def wait_trained(
    store: Path, topic: str, part: int, end: int, proc: WorkerProcess, timeout_s: float
) -> bool:
    """Until a checkpoint of MODEL records offset ``end`` of ``topic``[``part``]: True.

    Asks for manual checkpoints (SIGUSR1), which record what the trainer has
    handled so far. False when ``timeout_s`` passes first (a stall).
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        final = newest(store, MODEL)
        if final is not None and final.offsets.get(topic, {}).get(str(part), 0) >= end:
            return True
        assert proc.alive(), proc.text()[-3000:]
        proc.proc.send_signal(signal.SIGUSR1)
        time.sleep(1.5)
    return False


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_kill_9_the_whole_worker_at_random_moments_trains_the_clean_examples(
    sandbox: Sandbox, tmp_path: Path, started: list[WorkerProcess]
) -> None:
    rng = random.Random(9_2026)
    records = make_records(rng)
    expected = clean_run(records, sandbox.topics.partitions)
    assert len(expected) == REQUESTS - REQUESTS // 10
    assert len(expected) % BATCH == 0, "the last micro-batch must close to be trained"
    joined = {pair[0] for pair in clean_pairs(records, expected)}

    config = tmp_path / "models.toml"
    config.write_text(MODEL_TOML)
    store = tmp_path / "store"
    group = f"worker-{sandbox.name}"
    log = tmp_path / "worker.log"
    parts = list(range(sandbox.topics.partitions))
    ready = [f"joiner owns partitions {parts}", f"trainer owns partitions {parts}"]

    def start(n: int) -> WorkerProcess:
        env = worker_env(
            sandbox,
            app_id=group,
            store=store,
            commit_interval_s=0.3,  # kills land before, between and after commits
            DRIFTLOOP_WORKER_DATADIR=str(tmp_path / f"data-{n}"),
        )
        proc = WorkerProcess("all", env, log, config=config)
        started.append(proc)
        return proc

    topic_of = {"inference": sandbox.topics.inference_logs, "feedback": sandbox.topics.feedback}
    slices, min_kills = 8, 6
    cut = [len(records) * i // slices for i in range(slices + 1)]

    def produce_slice(n: int) -> None:
        for kind in ("inference", "feedback"):
            produce(
                sandbox,
                topic_of[kind],
                ((r.key.encode(), r.value) for r in records[cut[n] : cut[n + 1]] if r.kind == kind),
            )

    produced = kills = 0
    crashed: list[str] = []
    moments: list[str] = []
    while produced < slices - 1 or kills < min_kills:
        worker = start(kills)
        moment = rng.choice(["start-up", "recovery", "stream", "stream", "stream"])
        if moment == "start-up":  # imports, group join, table recovery, model restore
            time.sleep(rng.uniform(0.5, 5.0))
        elif moment == "recovery":  # the first assignment done: seeks, replays
            worker.wait_for(ready[rng.randrange(2)], timeout_s=DEADLINE_S)
            time.sleep(rng.uniform(0.0, 1.0))
        else:
            for marker in ready:
                worker.wait_for(marker, timeout_s=DEADLINE_S)
            if produced < slices - 1:
                produce_slice(produced)
                produced += 1
            time.sleep(rng.uniform(0.0, 2.0))
        if not worker.alive():
            crashed.append(f"incarnation {kills} exited {worker.proc.returncode}")
        worker.kill()
        moments.append(moment)
        kills += 1

    # The last incarnation runs until it has joined every input record and
    # trained every example.
    last = start(kills)
    for marker in ready:  # and its signal handlers are installed (SIGUSR1 below)
        last.wait_for(marker, timeout_s=DEADLINE_S)
    # The last slice, and rebalances while the last one works through it: a
    # second worker joins the group, takes partitions and is killed, and the
    # last one takes them back after the dead member's session expires (its
    # trainer seeks back to a checkpoint while fetches are in flight).
    produce_slice(slices - 1)
    started_at = time.monotonic()
    for n in range(2):
        intruder = start(kills + 1 + n)
        intruder.wait_for("owns partitions", timeout_s=DEADLINE_S)
        time.sleep(rng.uniform(0.0, 1.0))
        if not intruder.alive():
            crashed.append(f"intruder {n} exited {intruder.proc.returncode}")
        intruder.kill()
        moments.append("second worker")
    inputs = high_watermarks(sandbox.kafka, topic_of.values())
    assert sum(inputs.values()) == len(records)
    targets: dict[str, dict[int, int]] = {}
    for tp, end in inputs.items():
        targets.setdefault(tp.topic, {})[tp.partition] = end
    wait_committed(sandbox, group, targets, last, timeout_s=DEADLINE_S)
    joiner_s = time.monotonic() - started_at
    out = sandbox.topics.training_examples
    home = partition_of(MODEL, sandbox.topics.partitions)
    written = {tp.partition: end for tp, end in high_watermarks(sandbox.kafka, [out]).items()}
    assert all(end == 0 for p, end in written.items() if p != home), written
    examples = [decode(TrainingExample, v) for v in read_topic(sandbox, out, written[home])]
    emitted = [e.example_id for e in examples]
    extra = sorted(
        (e.request_id, e.feedback_event_id) for e in examples if e.example_id not in expected
    )
    lost = sorted(pair for pair in clean_pairs(records, expected) if pair[2] not in set(emitted))
    if extra and not skipped_records_explain(lost, extra):  # an invented example: never
        history = "\n".join(changelog_history(sandbox, group, {pair[0] for pair in extra}))
        pytest.fail(f"emitted {extra}, which a clean run does not; changelog:\n{history}")
    # A lost pair leaves the trainer's last micro-batch open, so it cannot catch up to
    # the end of the topic: the trainer checks below apply only when nothing was lost.
    caught_up = lost or wait_trained(store, out, home, written[home], last, DEADLINE_S)
    trainer_s = time.monotonic() - started_at
    code = last.terminate()
    wrong = [
        (d.error_kind, request_of(d), d.error)
        for d in dead_letters(sandbox)
        if d.error_kind in ("late", "orphan") and request_of(d) in joined
    ]
    assert not wrong, f"dead letters for requests the clean run joined: {wrong[:20]}"
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[text.index("Traceback") - 2000 :][:6000]
    assert not crashed, crashed
    assert code == 0, last.text()[-3000:]
    assert caught_up, f"the trainer did not catch up in {DEADLINE_S}s:\n{last.text()[-3000:]}"
    if lost:
        # Issue 9: an input record committed but never joined. The join table's
        # own input offsets make that impossible; report the evidence.
        history = "\n".join(changelog_history(sandbox, group, {pair[0] for pair in lost}))
        pytest.fail(
            f"lost {lost}, emitted instead {extra} ({len(emitted)} examples written);"
            f" rewinds {rewinds_in(text)}; changelog:\n{history}"
        )
    final = newest(store, MODEL)
    assert final is not None
    assert final.offsets[out] == {str(home): written[home]}
    assert final.example_digest == digest_of(expected)
    assert final.examples_seen == len(expected)
    print(
        f"kills={kills} ({', '.join(moments)}) inputs={len(records)} examples={len(expected)}"
        f" emitted={len(emitted)} repeats={len(emitted) - len(expected)}"
        f" after the last slice: all input committed in {joiner_s:.1f}s, all trained in"
        f" {trainer_s:.1f}s (two second workers included);"
        f" trainer seeks again: {text.count('seek again')};"
        f" joiner rewinds: {len(rewinds_in(text))} {rewinds_in(text)}"
    )
