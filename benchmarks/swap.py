"""Swap under load: p99 predict latency in the second after a swap vs steady state; RSS per version.

One ``driftloop serve`` process (the torch example by default) on the
embedded stack, under steady paced load: ``--clients`` load processes, each
sending ``--rate`` batches of ``--batch`` per second over loopback (httpx,
keep-alive; a request's latency counts from when it was due, so a stall
is not hidden by the requests it delayed), every response checked (non-2xx, or a batch whose live
predictions name different versions, counts as failed / half-swapped).
After ``--warmup`` seconds the pointer changes every ``--interval`` seconds:

- ``--swaps`` promotions of versions the server has not loaded (each a
  verified load, restore and warm-up on the server's follower thread, then
  the swap), then
- ``--swaps`` changes between resident versions (rollback / re-promotion: a
  switch, no load).

The window of a change is the second that starts when the pointer call
returns (the follower's load and the swap fall in it); its p99 (requests that
started in any window of that kind, pooled) is compared with the steady-state
p99 (requests that started at least 0.5 s before and 2 s after every change):
the ratio is the figure.

Memory: a second server with ``DRIFTLOOP_SERVER_RESIDENT_VERSIONS=--resident``
(4), no load; its RSS (psutil, median of 5 reads) with one version resident,
then after each promotion of a version it has not loaded, up to K resident;
``rss_per_extra_version`` = (RSS at K - RSS at 1) / (K - 1), the baseline being
the server with one version.

Run: ``python -m benchmarks.swap [--swaps 5] [--interval 3] [--rate 20]
[--clients 2] [--batch 32] [--resident 4] [--example torch_fm]
[--buckets N --factors F] [--server-env DRIFTLOOP_X=V ...] [--json]``
(about 90 s by default).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import emit, pct
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
from services.stack import EmbeddedStack, StackInfo

WINDOW_S = 1.0
QUIET_BEFORE_S, QUIET_AFTER_S = 0.5, 2.0


def window_p99(
    samples: list[tuple[float, float]], changes: list[float]
) -> tuple[list[float], float | None]:
    """Latencies of requests that started in a change's window, and their p99."""
    inside = [lat for start, lat in samples if any(t <= start < t + WINDOW_S for t in changes)]
    return inside, (pct(inside, 0.99) if inside else None)


def under_load(
    info: StackInfo,
    example: Example,
    store: StoreConfig,
    versions: list[str],
    workdir: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    server = ServeProcess(info, example, store, workdir, "swap", server_env(args.server_env))
    body = predict_body(example, args.batch)
    loads_changes: list[float] = []
    switch_changes: list[float] = []
    convergence: dict[str, list[float]] = {"load": [], "switch": []}
    with serving([server]), open_pointer(info, store, example.learning) as pointer:
        server.wait_live(versions[0])
        loads = [
            LoadProcess(
                server.url,
                server.predict_path,
                body,
                threads=1,
                allowed=versions,
                rate=args.rate,
            )
            for _ in range(args.clients)
        ]
        try:
            for load in loads:
                load.wait_ready()
            time.sleep(args.warmup)
            plan = [("load", v) for v in versions[1 : args.swaps + 1]]
            last, before = versions[args.swaps], versions[args.swaps - 1]
            plan += [("switch", before if i % 2 == 0 else last) for i in range(args.swaps)]
            for kind, version in plan:
                if kind == "switch" and version == before:
                    pointer.rollback(example.model, actor="bench", reason="benchmark")
                else:
                    pointer.promote(example.model, version, actor="bench", reason="benchmark")
                t = time.monotonic()
                (loads_changes if kind == "load" else switch_changes).append(t)
                server.wait_live(version)
                convergence[kind].append(time.monotonic() - t)
                time.sleep(max(0.0, t + args.interval - time.monotonic()))
            time.sleep(QUIET_AFTER_S)
        finally:
            results = [load.finish() for load in loads]
    samples = [s for r in results for s in r.samples]
    changes = loads_changes + switch_changes
    first = min(s for s, _ in samples) + 1.0 if samples else 0.0
    steady = [
        lat
        for start, lat in samples
        if start >= first
        and not any(t - QUIET_BEFORE_S <= start < t + QUIET_AFTER_S for t in changes)
    ]
    steady_p99 = pct(steady, 0.99) if steady else None
    out: dict[str, Any] = {
        "requests": len(samples),
        "failed": sum(r.failed for r in results),
        "half_swapped": sum(r.half_swapped for r in results),
        "errors": [e for r in results for e in r.errors][:5],
        "steady": {
            "requests": len(steady),
            "p50_ms": pct(steady, 0.5) * 1e3 if steady else None,
            "p99_ms": steady_p99 * 1e3 if steady_p99 else None,
        },
    }
    for kind, times in (("load", loads_changes), ("switch", switch_changes)):
        inside, p99 = window_p99(samples, times)
        out[kind] = {
            "changes": len(times),
            "requests_in_windows": len(inside),
            "p99_ms": p99 * 1e3 if p99 is not None else None,
            "max_ms": max(inside) * 1e3 if inside else None,
            "p99_vs_steady": p99 / steady_p99 if p99 and steady_p99 else None,
            "status_live_after_ms_median": statistics.median(convergence[kind]) * 1e3
            if convergence[kind]
            else None,
        }
    return out


def memory(
    info: StackInfo,
    example: Example,
    store: StoreConfig,
    versions: list[str],
    workdir: Path,
    resident: int,
    extra_env: dict[str, str],
) -> dict[str, Any]:
    server = ServeProcess(
        info,
        example,
        store,
        workdir,
        "rss",
        extra_env | {"DRIFTLOOP_SERVER_RESIDENT_VERSIONS": str(resident)},
    )

    def rss() -> float:
        reads = []
        for _ in range(5):
            time.sleep(0.2)
            reads.append(server.rss())
        return statistics.median(reads)

    with serving([server]), open_pointer(info, store, example.learning) as pointer:
        state = pointer.get(example.model)
        if state is None or state.live is None:
            raise SystemExit("no live version after the swap phase")
        live = state.live
        server.wait_live(live, resident=1)
        series = [rss()]
        others = [v for v in versions if v != live][: resident - 1]
        for n, version in enumerate(others, start=2):
            pointer.promote(example.model, version, actor="bench", reason="benchmark rss")
            server.wait_live(version, resident=n)
            series.append(rss())
    return {
        "resident": len(series),
        "rss_mib": [r / 2**20 for r in series],
        "rss_per_extra_version_mib": (series[-1] - series[0]) / (len(series) - 1) / 2**20
        if len(series) > 1
        else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--swaps", type=int, default=5, help="changes of each kind")
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between changes")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=20.0, help="batches/s per client")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--resident", type=int, default=4, help="K for the memory figure")
    add_example_options(parser)
    parser.add_argument(
        "--server-env",
        action="append",
        metavar="DRIFTLOOP_X=V",
        help="extra setting for the servers, e.g. DRIFTLOOP_SERVER_LOG_INFERENCES=false",
    )
    parser.add_argument("--dir", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.swaps < 2 or args.resident < 2:
        parser.error("--swaps and --resident must be at least 2")
    workdir = Path(tempfile.mkdtemp(prefix="driftloop-bench-swap-", dir=args.dir))
    try:
        example = example_of(args, workdir)
        store, versions = write_versions(workdir / "store", example, args.swaps + 1)
        with EmbeddedStack() as info:
            with open_pointer(info, store, example.learning) as pointer:
                pointer.promote(example.model, versions[0], actor="bench", reason="setup")
            swaps = under_load(info, example, store, versions, workdir, args)
            rss = memory(
                info, example, store, versions, workdir, args.resident, server_env(args.server_env)
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    params, nbytes = example.size()
    results = {
        "example": example.name,
        "parameters": params,
        "parameter_mib": nbytes / 2**20,
        "batch": args.batch,
        "swap": swaps,
        "memory": rss,
    }
    st = swaps["steady"]
    table = [
        f"swap under load ({args.clients} clients x {args.rate:g} batches of"
        f" {args.batch}/s), p99 of requests started in the {WINDOW_S:g} s after each change",
        f"model {size_line(example)}",
        f"steady state   {st['requests']:>6} requests  p50 {st['p50_ms'] or 0:7.2f} ms"
        f"  p99 {st['p99_ms'] or 0:7.2f} ms",
    ]
    for kind, what in (("load", "new version (load)"), ("switch", "resident (switch)")):
        r = swaps[kind]
        table.append(
            f"{what:19} {r['changes']} changes, {r['requests_in_windows']:>5} requests"
            f"  p99 {r['p99_ms'] or 0:7.2f} ms  max {r['max_ms'] or 0:7.2f} ms"
            f"  p99 / steady {r['p99_vs_steady'] or 0:5.2f}x"
            f"  (status live after {r['status_live_after_ms_median'] or 0:.0f} ms, median)"
        )
    table.append(
        f"failed {swaps['failed']}, half-swapped {swaps['half_swapped']}"
        f" of {swaps['requests']:,} requests"
    )
    table += [f"  error: {e}" for e in swaps["errors"]]
    table.append(
        "RSS with 1.."
        f"{rss['resident']} versions resident: "
        + ", ".join(f"{m:.0f}" for m in rss["rss_mib"])
        + f" MiB; per extra version {rss['rss_per_extra_version_mib'] or 0:.1f} MiB"
        " (baseline: one version resident)"
    )
    emit(results, args.json, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
