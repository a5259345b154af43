"""Rollback convergence: from the pointer change returning until every server answers with it.

Three ``driftloop serve`` processes follow one Redis pointer on the embedded
stack, under steady predict load (one load process per server, ``--rate``
batches of 32 per second, every response checked). The model, by default, is
the torch example at 2^20 hash rows x (15 factors + 1): 16.8M parameters,
64 MiB of float32 per version, so the baseline's load is that of a real model
(``--buckets 0 --factors 0``: the example as shipped, 2.4M parameters;
``--example river_logreg`` for the other). Its versions are written by the
project's trainer and checkpointer, like every benchmark's. The benchmark
alternates ``rollback`` (to the previous live version) and ``promote`` (of
the other one) ``--rollbacks`` times each, through the library call
``driftloop rollback`` / ``promote`` make (``RedisPointer.rollback`` /
``promote`` with the store's version check; the CLI's process start-up and
its relay to ``version-events`` come before and after that call and are not
timed).

Convergence of one change: from the call returning until the *last* of the
three servers answers a predict request with the new version (status routes
are not consulted). Each server has its own poll process
(:mod:`benchmarks._poll`): from just before the call until every server
answered with the new version it sends single-instance predicts back to
back on a keep-alive connection and takes the time as each response has
been read; between changes it sends one every ``--idle-poll-ms`` (10), still
checking each answer, so the pollers measure the change without adding
their own maximal load to the servers' steady one (``--idle-poll-ms 0``:
back to back all the time). A server that answers with the new version
before the call has returned counts 0. The next change starts once all have
converged (plus a 20-50 ms pause). Untimed, each server's status then says
when it applied the epoch (``applied_ms``, its clock, the same machine's):
``applied`` is from the call returning until the last server applied it, so
the rest of the convergence is the servers answering with it.

Baseline, same run, same servers settings but ``DRIFTLOOP_SERVER_RESIDENT_VERSIONS=1``:
only the live version stays loaded, so every change is a load from the store
(verified read, restore, warm-up) — what a registry that moves an alias and
lets servers load what it names gives. ``--baseline-rollbacks`` (default 10)
of each.

Also counted over the whole run: failed requests (transport errors, non-2xx),
half-swapped ones (a batch whose live predictions name different versions,
or a version that is not one of the two) and regressed ones (a server that
answered the old version after it had answered the new one).

Run: ``python -m benchmarks.rollback [--rollbacks 50] [--baseline-rollbacks 10]
[--example torch_fm] [--buckets N --factors F] [--rate 20] [--idle-poll-ms 10]
[--server-env DRIFTLOOP_X=V ...] [--json]``.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import emit, pct
from benchmarks._poll import Watch
from benchmarks._serving import (
    Example,
    LoadProcess,
    ServeProcess,
    add_example_options,
    example_of,
    open_pointer,
    predict_body,
    server_env,
    serving,
    size_line,
    write_versions,
)
from services.checkpoints.config import StoreConfig
from services.pointer.redis import RedisPointer
from services.stack import EmbeddedStack, StackInfo

SERVERS = 3
#: The default model: torch_fm with 2^20 rows x (15 factors + 1), 16.8M parameters
#: (64 MiB of float32 per version), so the baseline's load is that of a real model.
LARGE_BUCKETS, LARGE_FACTORS = 1 << 20, 15


def applied_at(client: httpx.Client, path: str, epoch: int) -> float | None:
    """When the server applied ``epoch`` (epoch ms, its clock), or None."""
    try:
        body = client.get(path).json()
    except (httpx.HTTPError, ValueError):
        return None
    if body.get("epoch") != epoch or not body.get("applied_ms"):
        return None
    return float(body["applied_ms"])


def run_mode(
    info: StackInfo,
    example: Example,
    store: StoreConfig,
    versions: tuple[str, str],
    workdir: Path,
    *,
    label: str,
    resident: int,
    rollbacks: int,
    rate: float,
    idle_s: float,
    extra_env: dict[str, str],
) -> dict[str, Any]:
    a, b = versions
    servers = [
        ServeProcess(
            info,
            example,
            store,
            workdir,
            f"{label}-{i}",
            extra_env | {"DRIFTLOOP_SERVER_RESIDENT_VERSIONS": str(resident)},
        )
        for i in range(SERVERS)
    ]
    body1 = predict_body(example, 1)
    body32 = predict_body(example, 32)
    rng = random.Random(0)
    with serving(servers), open_pointer(info, store, example.learning) as pointer:
        for s in servers:
            s.wait_live(b)
        # Untimed: a rollback and a re-promotion, so both versions have been loaded once.
        pointer.rollback(example.model, actor="bench", reason="benchmark warm-up")
        for s in servers:
            s.wait_live(a)
        pointer.promote(example.model, b, actor="bench", reason="benchmark warm-up")
        for s in servers:
            s.wait_live(b, resident=min(resident, 2))
        loads = [
            LoadProcess(s.url, s.predict_path, body32, threads=1, allowed=versions, rate=rate)
            for s in servers
            if rate > 0
        ]
        watch = Watch([s.url for s in servers], servers[0].predict_path, body1, idle_s=idle_s)
        statuses = [httpx.Client(base_url=s.url, timeout=10.0) for s in servers]
        status_path = f"/v1/models/{example.model}"
        applied_lag: list[float] = []
        timings: list[float] = []
        per_server: list[list[float]] = []
        timeouts = 0
        try:
            for load in loads:
                load.wait_ready()
            watch.wait_ready()
            time.sleep(1.0)  # load and pollers running
            for i in range(2 * rollbacks):
                target = a if i % 2 == 0 else b
                change: Callable[[RedisPointer], Any] = (
                    (lambda p: p.rollback(example.model, actor="bench", reason="benchmark"))
                    if target == a
                    else (lambda p: p.promote(example.model, b, actor="bench", reason="bench"))
                )
                watch.arm(target)
                event = change(pointer)
                watch.returned(time.monotonic())
                returned_ms = time.time() * 1e3
                if event.live != target:
                    raise SystemExit(f"change {i} made {event.live} live, not {target}")
                got = watch.wait(60.0)
                watch.relax()
                if got is None:
                    timeouts += 1
                else:
                    timings.append(max(got))
                    per_server.append(got)
                    # Untimed: when each server applied the epoch (its status, its clock).
                    applied = [applied_at(c, status_path, event.epoch) for c in statuses]
                    if all(a is not None for a in applied):
                        applied_lag.append(
                            max(0.0, max(a for a in applied if a is not None) - returned_ms) / 1e3
                        )
                time.sleep(rng.uniform(0.02, 0.05))
        finally:
            watch.close()
            for status in statuses:
                status.close()
            results = [load.finish() for load in loads]
    load_requests = sum(len(r.samples) for r in results)
    errors = [e for r in results for e in r.errors] + watch.errors
    return {
        "resident_versions": resident,
        "changes": 2 * rollbacks,
        "converged": len(timings),
        "timeouts": timeouts,
        "p50_ms": pct(timings, 0.5) * 1e3 if timings else None,
        "p99_ms": pct(timings, 0.99) * 1e3 if timings else None,
        "max_ms": max(timings) * 1e3 if timings else None,
        # Slower than the follower's poll interval (1 s): a lost hint, or a starved machine.
        "over_1s": sum(1 for t in timings if t >= 1.0),
        # From the call returning until the last server applied the epoch (its status's
        # applied_ms; the rest of the convergence is answering with it).
        "applied_p50_ms": pct(applied_lag, 0.5) * 1e3 if applied_lag else None,
        "applied_p99_ms": pct(applied_lag, 0.99) * 1e3 if applied_lag else None,
        "first_server_p50_ms": pct([min(g) for g in per_server], 0.5) * 1e3 if per_server else None,
        "poll_p50_ms": pct(watch.latencies, 0.5) * 1e3,
        "load_requests": load_requests,
        "poll_requests": watch.requests,
        "failed": sum(r.failed for r in results) + watch.failed,
        "half_swapped": sum(r.half_swapped for r in results),
        "regressed": watch.regressed,
        "errors": errors[:5],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rollbacks", type=int, default=50, help="rollbacks (and re-promotions)")
    parser.add_argument("--baseline-rollbacks", type=int, default=10)
    add_example_options(parser, buckets=LARGE_BUCKETS, factors=LARGE_FACTORS)
    parser.add_argument("--rate", type=float, default=20.0, help="batches/s per server (load)")
    parser.add_argument(
        "--idle-poll-ms",
        type=float,
        default=10.0,
        help="poll period between changes (0: back to back all the time)",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        metavar="DRIFTLOOP_X=V",
        help="extra setting for every server, e.g. DRIFTLOOP_SERVER_LOG_INFERENCES=false",
    )
    parser.add_argument("--dir", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="driftloop-bench-rollback-", dir=args.dir))
    try:
        example = example_of(args, workdir)
        store, written = write_versions(workdir / "store", example, 2)
        a, b = written
        with EmbeddedStack() as info:
            with open_pointer(info, store, example.learning) as pointer:
                pointer.promote(example.model, a, actor="bench", reason="benchmark setup")
                pointer.promote(example.model, b, actor="bench", reason="benchmark setup")
            common = {
                "rate": args.rate,
                "idle_s": args.idle_poll_ms / 1e3,
                "extra_env": server_env(args.server_env),
            }
            driftloop = run_mode(
                info, example, store, (a, b), workdir, label="resident",
                resident=4, rollbacks=args.rollbacks, **common,
            )  # fmt: skip
            baseline = run_mode(
                info, example, store, (a, b), workdir, label="load",
                resident=1, rollbacks=args.baseline_rollbacks, **common,
            )  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    params, nbytes = example.size()
    results: dict[str, Any] = {
        "example": example.name,
        "parameters": params,
        "parameter_mib": nbytes / 2**20,
        "servers": SERVERS,
        "driftloop": driftloop,
        "baseline_load_on_change": baseline,
    }
    for q in ("p50", "p99", "max"):
        d, bl = driftloop[f"{q}_ms"], baseline[f"{q}_ms"]
        results[f"{q}_speedup"] = bl / d if d and bl else None
    table = [
        f"rollback convergence, {SERVERS} servers, under load"
        f" ({args.rate:g} batches of 32 /s per server + one poll process each)",
        f"model {size_line(example)}",
        f"{'':24} {'changes':>7} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}"
        f" {'failed':>6} {'half':>5} {'regr':>5} {'timeouts':>8} {'poll p50':>8}"
        f" {'applied p50/p99':>15}",
    ]
    for name, r in (("driftloop (K=4 resident)", driftloop), ("baseline (K=1: load)", baseline)):
        table.append(
            f"{name:24} {r['changes']:>7} {r['p50_ms'] or 0:9.2f} {r['p99_ms'] or 0:9.2f}"
            f" {r['max_ms'] or 0:9.2f} {r['failed']:>6} {r['half_swapped']:>5}"
            f" {r['regressed']:>5} {r['timeouts']:>8} {r['poll_p50_ms']:8.2f}"
            f" {r['applied_p50_ms'] or 0:7.2f}/{r['applied_p99_ms'] or 0:7.2f}"
        )
    table.append(
        "baseline / driftloop: "
        + ", ".join(f"{q} {results[f'{q}_speedup'] or 0:.1f}x" for q in ("p50", "p99", "max"))
    )
    table.append(
        f"changes slower than 1 s (the poll interval): driftloop {driftloop['over_1s']},"
        f" baseline {baseline['over_1s']}"
    )
    requests = sum(r["load_requests"] + r["poll_requests"] for r in (driftloop, baseline))
    table.append(f"requests checked: {requests:,}")
    for r in (driftloop, baseline):
        for e in r["errors"]:
            table.append(f"  error: {e}")
    emit(results, args.json, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
