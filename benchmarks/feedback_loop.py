"""Feedback-loop latency: from a feedback event produced to a server answering with a
version that learned from it.

The whole loop runs on the embedded stack (:mod:`benchmarks._loop`): a
``driftloop worker --role all`` (joiner and trainer), a ``driftloop worker
--role gateway`` and ``--servers`` ``driftloop serve`` processes, with an
eager policy: a river logistic regression (the shipped example's pipeline)
checkpointed every ``--every`` examples, ``promotion.mode = "auto"`` on 30
held-out examples (10 % of requests held out, a buffer of 300), the guard on
(30 examples), ``feedback_policy = "first"``, a 10 s join window. A spawned
traffic process sends ``--rate`` requests/s (SEA instances, one request id
each, ``--batch`` per predict call, the servers in turn) as real HTTP predict
calls; the servers log the inference logs; each request's feedback goes to
the ``feedback`` topic right after the answer. Bootstrap: nothing is live, so
the first 400 requests' inference logs are written straight to
``inference-logs``; the gateway promotes the first checkpoint and the traffic
starts once every server serves it.

Every feedback event produced in the ``--seconds`` window after a
``--warmup`` is measured, except held-out requests (never learned). Its loop,
in five stages, each ending at the first event that closes it:

- **join**: feedback produced -> its TrainingExample on ``training-examples``
  (record timestamp);
- **training**: -> the last example that checkpoint covers (the newest of
  the examples just below its manifest's consumed offsets, by record
  timestamp), where the checkpoint is the first whose consumed offsets
  cover the example's offset: the wait for the count trigger to fill;
- **checkpoint**: -> that checkpoint's CheckpointEvent: the trainer reading
  and learning that last example, the snapshot, the commit and the event;
- **gateway**: -> the VersionEvent (its ``ts``, when the pointer changed)
  that made that version, or a later one, live;
- **swap**: -> the first predict answer, at any server, naming that version
  or a later one (seen by the traffic process).

The traffic goes on for up to ``--drain`` s after the window so the last
events can close; events still open then are counted, by stage.

Baseline, same run: the transport floor, one record's produce -> consume
round trip on the same broker (kafka-python, ``fetch_max_wait_ms=10``, every
0.2 s during the traffic): the loop crosses the broker at least four times
(feedback, example, checkpoint event, version event), so ``4 x floor`` is
what it could not beat. ``ratio`` = loop p50 / floor p50. Also printed: the
checkpoint interval at the traffic's learned rate (``every / (rate x 0.9)``),
the mean wait an example has for its checkpoint being half that. The
target, p50 <= 1 s on loopback, is printed as met or not.

Run: ``python -m benchmarks.feedback_loop [--seconds 60] [--rate 500]
[--batch 5] [--servers 2] [--every 300] [--json]``.
"""

from __future__ import annotations

import argparse
import bisect
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import emit, pct
from benchmarks._loop import (
    Collector,
    Loop,
    TrafficResult,
    floor_round_trips,
    model_config,
    now_ms,
    seq,
)
from services.stack import EmbeddedStack
from services.validation.base import is_held_out

HOLDOUT = 10.0
STAGES = ("join", "training", "checkpoint", "gateway", "swap")


def progress(what: str) -> None:
    print(f"[feedback_loop {time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)


def loops(
    collector: Collector, traffic: TrafficResult, window: tuple[int, int]
) -> tuple[list[dict[str, int]], dict[str, int]]:
    """Each measured event's stage durations (ms), and how many stayed open in each stage."""
    checkpoints = sorted(collector.checkpoints, key=lambda c: seq(c.version))
    by_partition: dict[int, list[int]] = {}
    for p in {p for c in checkpoints for p in c.offsets}:
        covered, most = [], 0
        for c in checkpoints:  # a checkpoint covers at least what an earlier one did
            most = max(most, c.offsets.get(p, 0))
            covered.append(most)
        by_partition[p] = covered
    promoted = sorted(
        (e.ts, seq(e.live))
        for _, e in collector.changes
        if e.live is not None and e.action in ("promote", "rollback")
    )
    first_answer: dict[int, int] = {}
    for versions in traffic.first_seen.values():
        for v, at in versions.items():
            if v.startswith("loop-"):
                first_answer[seq(v)] = min(at, first_answer.get(seq(v), at))
    answered = sorted(first_answer)
    at = {(j.partition, j.offset): j.ts for j in collector.examples.values()}
    last_covered = [
        max((at.get((p, o - 1), 0) for p, o in c.offsets.items()), default=0) for c in checkpoints
    ]
    out: list[dict[str, int]] = []
    open_in = dict.fromkeys(STAGES, 0)
    for rid, sent in traffic.sent.items():
        if not window[0] <= sent < window[1] or is_held_out(rid, HOLDOUT):
            continue
        ex = collector.examples.get(rid)
        if ex is None:
            open_in["join"] += 1
            continue
        offsets = by_partition.get(ex.partition, [])
        i = bisect.bisect_right(offsets, ex.offset)
        if i >= len(checkpoints):
            open_in["training"] += 1
            continue
        c = checkpoints[i]
        n = seq(c.version)
        change = next(((ts, s) for ts, s in promoted if s >= n), None)
        if change is None:
            open_in["gateway"] += 1
            continue
        later = [first_answer[s] for s in answered[bisect.bisect_left(answered, n) :]]
        seen = min((t for t in later if t >= change[0]), default=None)
        if seen is None:
            open_in["swap"] += 1
            continue
        out.append(
            {
                "join": ex.ts - sent,
                "training": max(last_covered[i], ex.ts) - ex.ts,
                "checkpoint": c.ts - max(last_covered[i], ex.ts),
                "gateway": change[0] - c.ts,
                "swap": seen - change[0],
                "total": seen - sent,
            }
        )
    return out, open_in


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=10.0, help="traffic before the window")
    parser.add_argument("--drain", type=float, default=20.0, help="traffic after it, at most")
    parser.add_argument("--rate", type=float, default=500.0, help="requests/s (instances)")
    parser.add_argument("--batch", type=int, default=5, help="instances per predict call")
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--every", type=int, default=300, help="count checkpoint interval")
    parser.add_argument("--dir", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="driftloop-bench-loop-", dir=args.dir))
    example = model_config(
        workdir / "loop.toml", every_n=args.every, holdout_percent=HOLDOUT, min_examples=30,
        holdout_size=300, guard_min=30, cooldown_s=5.0,
    )  # fmt: skip
    floor: list[float] = []
    try:
        with EmbeddedStack() as info:
            progress("stack up; starting worker, gateway and servers")
            loop = Loop(info, example, workdir, servers=args.servers)
            collector = Collector(info, loop.store.root, HOLDOUT)
            stop_floor = threading.Event()
            try:
                loop.bootstrap(400, seed=1)
                loop.wait_serving()
                progress(f"bootstrap promoted ({collector.live()}); traffic at {args.rate:g}/s")
                floorer = threading.Thread(
                    target=floor_round_trips, args=(loop.kafka, stop_floor, floor), daemon=True
                )
                floorer.start()
                traffic = loop.traffic(args.rate, args.batch, seed=2)
                start = now_ms()
                window = (
                    int(start + args.warmup * 1e3),
                    int(start + (args.warmup + args.seconds) * 1e3),
                )
                end = window[1] + args.drain * 1e3
                while now_ms() < end:
                    time.sleep(5.0)
                    loop.check()
                    examples, checkpoints, promotions = collector.counts()
                    progress(
                        f"t={(now_ms() - start) / 1e3:.0f}s examples={examples}"
                        f" checkpoints={checkpoints} gateway promotions={promotions}"
                        f" live={collector.live()}"
                    )
                result = traffic.finish()
                stop_floor.set()
                floorer.join(30)
                time.sleep(1.0)  # the last records
            finally:
                stop_floor.set()
                collector.close()
                loop.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    measured, open_in = loops(collector, result, window)
    floor_p50 = pct(floor, 0.5) if floor else None
    learned_rate = args.rate * (1 - HOLDOUT / 100)
    span_s = (window[1] - window[0]) / 1e3
    sent_rate = sum(1 for t in result.sent.values() if window[0] <= t < window[1]) / span_s
    joined = sum(1 for j in collector.examples.values() if window[0] <= j.ts < window[1])
    joined_rate = joined / span_s
    results: dict[str, Any] = {
        "rate": args.rate,
        "batch": args.batch,
        "servers": args.servers,
        "every": args.every,
        "measured": len(measured),
        "open": open_in,
        "floor_p50_s": floor_p50,
        "floor_samples": len(floor),
        "checkpoint_interval_s": args.every / learned_rate,
        "sent_per_s": sent_rate,
        "joined_per_s": joined_rate,
        "kept_up": joined_rate >= 0.95 * sent_rate,
        "traffic": {
            "calls": result.calls,
            "failed": result.failed,
            "max_late_s": result.late_s,
            "errors": result.errors,
        },
        "checkpoints": len(collector.checkpoints),
        "gateway_promotions": sum(1 for _, e in collector.changes if e.actor == "gateway"),
    }
    table = [
        f"feedback-loop latency, {args.rate:g} requests/s ({args.batch} per call, {args.servers}"
        f" servers), checkpoint every {args.every}, auto promotion",
        f"measured {len(measured)} feedback events (open at the end, by stage: {open_in})",
    ]
    if measured:
        totals = [m["total"] / 1e3 for m in measured]
        mean_total = sum(totals) / len(totals)
        results |= {
            "p50_s": pct(totals, 0.5),
            "p99_s": pct(totals, 0.99),
            "max_s": max(totals),
            "mean_s": mean_total,
            "stages": {
                s: {
                    "p50_s": pct([m[s] / 1e3 for m in measured], 0.5),
                    "share": sum(m[s] for m in measured) / 1e3 / len(measured) / mean_total,
                }
                for s in STAGES
            },
            "ratio_vs_floor": pct(totals, 0.5) / floor_p50 if floor_p50 else None,
            "target_met": pct(totals, 0.5) <= 1.0,
        }
        table += [
            f"loop: p50 {results['p50_s']:.3f} s  p99 {results['p99_s']:.3f} s"
            f"  max {results['max_s']:.3f} s  mean {mean_total:.3f} s",
            "stage       p50 s   share of mean",
        ]
        for s in STAGES:
            st = results["stages"][s]
            table.append(f"{s:<10} {st['p50_s']:6.3f}   {st['share'] * 100:5.1f} %")
    else:
        results |= {"p50_s": None, "ratio_vs_floor": None, "target_met": False}
        table.append("no loop closed within the run")
    if floor_p50:
        table.append(
            f"baseline: transport floor (produce -> consume, same broker) p50"
            f" {floor_p50 * 1e3:.1f} ms over {len(floor)}"
            + (f"; loop p50 / floor = {results['ratio_vs_floor']:.0f}x" if measured else "")
            + f" (four crossings: {4 * floor_p50 * 1e3:.0f} ms)"
        )
    table.append(
        f"checkpoint interval at the learned rate: {results['checkpoint_interval_s']:.2f} s"
        f"; {results['checkpoints']} checkpoints, {results['gateway_promotions']} promoted"
    )
    table.append(
        f"in the window: {sent_rate:.0f} feedback events/s sent, {joined_rate:.0f} examples/s"
        f" joined"
        + (
            ""
            if results["kept_up"]
            else " - the loop fell behind the traffic: its latency grows with the run's length"
            " and the events still open are not in the figures"
        )
    )
    table.append(f"target p50 <= 1 s: {'met' if results['target_met'] else 'NOT met'}")
    table.append(
        f"traffic: {result.calls} calls, {result.failed} failed, most late {result.late_s:.2f} s"
    )
    table += [f"  error: {e}" for e in result.errors]
    emit(results, args.json, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
