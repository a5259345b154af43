"""Time to roll back a bad version under traffic: an operator forces a poisoned
checkpoint live; how long, and how many held-out examples, until the guard undoes it.

The loop runs on the embedded stack as in ``feedback_loop`` (:mod:`benchmarks._loop`:
``driftloop worker --role all``, ``--role gateway``, ``--servers`` ``driftloop
serve`` processes, ``--rate`` requests/s of real HTTP predict calls with each
request's feedback produced right after the answer), with the guard at the
shipped example's ``min_examples = 100``, ``threshold = 0.1``, a 2 s cooldown,
10 % of requests held out. Once the gateway has promoted two of the trainer's
checkpoints, ``--repeats`` times: a checkpoint trained on inverted labels is
written through the signing checkpointer
(:func:`services.demo.poison.write_poisoned`: it verifies, only its figures
are bad) and promoted as ``driftloop promote`` does (``RedisPointer.promote``
with the store's version check, actor ``operator``); then the benchmark waits
for the guard's rollback on ``version-events``. Each repetition reports:

- **seconds**: the promotion's VersionEvent ``ts`` -> the rollback's;
- **held-out examples**: held-out TrainingExamples that reached
  ``training-examples`` between the two (record timestamps), and the guard's
  verdict's ``n`` (the examples both versions were scored on);
- **bad answers**: predict answers the poisoned version gave (counted by the
  traffic process over the run).

Baseline, same run: the guard's own minimum, ``guard.min_examples`` held-out
examples at the traffic's held-out rate (``min_examples / (rate x 10 %)``
seconds): the fastest any decision on a same-request comparison of that size
could come. ``ratio`` = seconds / minimum.

``--detector``: the guard also runs the shipped river example's ADWIN on the
live error stream and judges at ``DETECTOR_MIN`` (20) held-out examples once it
fires (the same-request comparison still decides); the minimum is then that
many held-out examples at the held-out rate.

Run: ``python -m benchmarks.bad_version [--repeats 5] [--rate 500] [--batch 5] [--detector]
[--json]``.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import emit, pct
from benchmarks._loop import MODEL, Collector, Loop, model_config, sea
from benchmarks._serving import open_pointer
from schemas.events import Verdict
from services.demo.poison import write_poisoned
from services.pointer.factory import references_from_env
from services.stack import EmbeddedStack
from services.validation.base import is_held_out

HOLDOUT = 10.0
GUARD_MIN = 100
DETECTOR_MIN = 20
COOLDOWN_S = 2.0


def progress(what: str) -> None:
    print(f"[bad_version {time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)


def wait_for(what: str, cond: Any, loop: Loop, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        loop.check()
        time.sleep(0.05)
    raise SystemExit(f"timed out after {timeout_s:g} s waiting for {what}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rate", type=float, default=500.0, help="requests/s (instances)")
    parser.add_argument("--batch", type=int, default=5, help="instances per predict call")
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=120.0, help="per rollback, seconds")
    parser.add_argument(
        "--detector", action="store_true", help="the guard's ADWIN on the live error stream"
    )
    parser.add_argument("--dir", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    workdir = Path(tempfile.mkdtemp(prefix="driftloop-bench-bad-", dir=args.dir))
    example = model_config(
        workdir / "loop.toml", every_n=300, holdout_percent=HOLDOUT, min_examples=30,
        holdout_size=300, guard_min=GUARD_MIN, cooldown_s=COOLDOWN_S,
        detector_min=DETECTOR_MIN if args.detector else None,
    )  # fmt: skip
    needed = DETECTOR_MIN if args.detector else GUARD_MIN
    config = example.learning.model(MODEL)
    # as the test's and the demo's: recent traffic that is learned, labels inverted by the writer
    poison_pairs = [
        (f, y) for r, f, y in itertools.islice(sea(99, "p"), 1200) if not is_held_out(r, HOLDOUT)
    ][:600]
    reps: list[dict[str, Any]] = []
    try:
        with EmbeddedStack() as info:
            progress("stack up; starting worker, gateway and servers")
            loop = Loop(info, example, workdir, servers=args.servers)
            collector = Collector(info, loop.store.root, HOLDOUT)
            try:
                loop.bootstrap(400, seed=1)
                loop.wait_serving()
                traffic = loop.traffic(args.rate, args.batch, seed=2)
                progress(f"traffic at {args.rate:g}/s; waiting for two gateway promotions")
                wait_for("two gateway promotions", lambda: collector.counts()[2] >= 2, loop, 300)
                for i in range(args.repeats):
                    references = references_from_env(
                        loop.store,
                        info.redis_config(),
                        kafka=info.kafka_config(),
                        topics=info.topics,
                    )
                    event = write_poisoned(loop.store, config, poison_pairs, references=references)
                    version = event.version
                    # a fresh pointer and store check per change, as each `driftloop promote`
                    # opens (a read-only store's catalog is synced once per object)
                    with open_pointer(info, loop.store, example.learning) as pointer:
                        forced = pointer.promote(
                            MODEL, version, actor="operator", reason="benchmark: poisoned"
                        )
                    progress(f"{i + 1}/{args.repeats}: {version} forced live")

                    def rolled_back(version: str = version) -> Any:
                        with collector.lock:
                            return next(
                                (
                                    (ts, e)
                                    for ts, e in collector.changes
                                    if e.action == "rollback"
                                    and e.actor == "guard"
                                    and e.from_live == version
                                ),
                                None,
                            )

                    _, back = wait_for("the guard's rollback", rolled_back, loop, args.timeout)

                    def guard_verdict(version: str = version) -> Verdict | None:
                        with collector.lock:
                            return next(
                                (
                                    v
                                    for v in collector.verdicts
                                    if v.judge == "guard"
                                    and v.version == version
                                    and v.decision == "rollback"
                                ),
                                None,
                            )

                    try:
                        verdict = wait_for("the guard's verdict", guard_verdict, loop, 10.0)
                    except SystemExit:  # the rollback is what is timed; its figures are a bonus
                        verdict = None
                    with collector.lock:
                        held = sum(
                            1
                            for j in collector.examples.values()
                            if j.held_out and forced.ts < j.ts <= back.ts
                        )
                    seconds = (back.ts - forced.ts) / 1e3
                    reps.append(
                        {
                            "version": version,
                            "seconds": seconds,
                            "held_out_examples": held,
                            "verdict_n": verdict.n if verdict is not None else None,
                            "difference": verdict.difference if verdict is not None else None,
                            "rolled_back_to": back.live,
                        }
                    )
                    progress(f"  rolled back after {seconds:.2f} s, {held} held-out examples")
                    time.sleep(COOLDOWN_S + 3.0)  # the guard's cooldown, and traffic
                result = traffic.finish()
            finally:
                collector.close()
                loop.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for r in reps:
        r["bad_answers"] = result.served.get(r["version"], 0)
    floor_s = needed / (args.rate * HOLDOUT / 100)
    secs = [r["seconds"] for r in reps]
    results: dict[str, Any] = {
        "rate": args.rate,
        "batch": args.batch,
        "guard_min_examples": GUARD_MIN,
        "detector": args.detector,
        "minimum_examples": needed,
        "holdout_percent": HOLDOUT,
        "repeats": reps,
        "p50_s": pct(secs, 0.5),
        "max_s": max(secs),
        "baseline_guard_minimum_s": floor_s,
        "ratio_p50": pct(secs, 0.5) / floor_s,
        "traffic": {"calls": result.calls, "failed": result.failed, "errors": result.errors},
    }
    table = [
        f"bad version rollback at {args.rate:g} requests/s ({args.batch} per call,"
        f" {args.servers} servers); guard min_examples {GUARD_MIN}"
        + (f", ADWIN detector judging at {DETECTOR_MIN}" if args.detector else "")
        + f", {HOLDOUT:g} % held out",
        f"{'#':>2} {'version':<12} {'seconds':>8} {'ratio':>6} {'held-out':>8} {'verdict n':>9}"
        f" {'bad answers':>11}",
    ]
    for i, r in enumerate(reps, 1):
        table.append(
            f"{i:>2} {r['version']:<12} {r['seconds']:8.2f} {r['seconds'] / floor_s:5.1f}x"
            f" {r['held_out_examples']:>8} {r['verdict_n'] or 0:>9} {r['bad_answers']:>11}"
        )
    table.append(
        f"p50 {results['p50_s']:.2f} s, max {results['max_s']:.2f} s; baseline: the guard's"
        f" minimum ({needed} held-out examples at {args.rate * HOLDOUT / 100:g}/s) ="
        f" {floor_s:.2f} s; p50 / minimum = {results['ratio_p50']:.1f}x"
    )
    table.append(f"traffic: {result.calls} calls, {result.failed} failed")
    table += [f"  error: {e}" for e in result.errors]
    emit(results, args.json, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
