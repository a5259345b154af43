"""Predict over HTTP: requests/s and p50/p99 latency, inference logging on vs off.

For the shipped river and torch examples (one checkpoint each, written by the
trainer into a temporary store and made live through the pointer), two
``driftloop serve`` processes on the embedded stack: one as shipped (every
prediction logged as an InferenceLog through the SpooledPublisher to the
broker) and one with ``DRIFTLOOP_SERVER_LOG_INFERENCES=false``. Each is driven
over loopback by ``--clients`` load processes of ``--threads`` threads each
(httpx, keep-alive, closed loop: the next request as soon as one answered)
for ``--duration`` seconds, with single instances and with batches of 32.
The two servers take turns, ``--rounds`` times (the machine's load drifts);
each figure is the median over rounds, and ``log_cost`` is
``1 - (logging on req/s) / (logging off req/s)`` (median of per-round ratios).
The server's CPU seconds per request (all its threads, read from the process
while the clients run) is printed too, and ``log_cpu_cost`` is
``1 - (off CPU per request) / (on CPU per request)``: on a machine other work
shares, it moves less than req/s (which also measures how the scheduler shares
the cores among server, clients, broker and the rest).

Anchor: the in-process ``adapter.predict_many`` time alone on the same
batches (median of ``--calls`` calls, on a worker thread as the server runs
it; the adapter loaded through the server's loader). The Decision Service
paper's decisions took 0.2 ms; ``http_p50 / predict_many`` is what HTTP,
validation, routing and logging add around the model. A second anchor, the
logging path alone in process (``--log-events`` events): microseconds per
prediction to build its InferenceLog, to ``publish`` it (what the request
waits for) and to have it sent to the embedded broker (``flush``).

Run: ``python -m benchmarks.predict [--duration 2] [--rounds 2] [--clients 2]
[--threads 2] [--json]`` (about 80 s by default).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import emit, pct
from benchmarks._serving import (
    DriveResult,
    Example,
    ServeProcess,
    drive,
    features,
    open_pointer,
    predict_body,
    serving,
    write_versions,
)
from schemas.events import InferenceLog
from services.publish.spooled import SpooledPublisher
from services.server.loader import StoreLoader
from services.stack import EmbeddedStack

BATCHES = (1, 32)
MODES = {"on": {}, "off": {"DRIFTLOOP_SERVER_LOG_INFERENCES": "false"}}


def anchor(loader: StoreLoader, example: Example, version: str, calls: int) -> dict[int, float]:
    """Median seconds of one ``predict_many`` call per batch size, on a worker thread."""
    adapter = loader.load(example.model, version)
    out: dict[int, float] = {}
    for batch in BATCHES:
        feats = [i["features"] for i in features(example, batch)]

        def timed(feats: list[dict[str, Any]] = feats) -> float:
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                adapter.predict_many(feats)
                times.append(time.perf_counter() - start)
            return statistics.median(times)

        with ThreadPoolExecutor(1) as pool:
            out[batch] = pool.submit(timed).result()
    return out


def log_path(info: Any, example: Example, workdir: Path, count: int) -> dict[str, float]:
    """Microseconds per prediction of the logging path alone, in process: building the
    InferenceLog (pydantic), ``SpooledPublisher.publish`` (route, encode, buffer: what
    a request waits for) and publish + send to the embedded broker until ``flush``."""
    feats = [i["features"] for i in features(example, 32)]
    start = time.perf_counter()
    events = [
        InferenceLog.new(
            request_id=uuid.uuid4().hex,
            model=example.model,
            model_version="bench",
            features=dict(feats[i % len(feats)]),
            prediction=0.5,
            scores={"true": 0.5, "false": 0.5},
            route="live",
            server="bench",
        )
        for i in range(count)
    ]
    build = time.perf_counter() - start
    publisher = SpooledPublisher.for_kafka(
        info.kafka_config(), workdir / f"spool-logpath-{example.name}", topics=info.topics
    )
    try:
        start = time.perf_counter()
        for event in events:
            publisher.publish(event)
        enqueue = time.perf_counter() - start
        publisher.flush(120.0)
        sent = time.perf_counter() - start
    finally:
        publisher.close()
    return {
        "build_us": build / count * 1e6,
        "publish_us": enqueue / count * 1e6,
        "publish_and_send_us": sent / count * 1e6,
    }


def load(
    pool: ProcessPoolExecutor, server: ServeProcess, body: bytes, args: argparse.Namespace
) -> tuple[DriveResult, float, float]:
    """All clients against ``server`` for ``args.duration`` s: merged result, seconds,
    and the CPU seconds the server process used meanwhile (all its threads)."""
    cpu0 = server.cpu_seconds()
    futures = [
        pool.submit(drive, server.url, server.predict_path, body, args.duration, args.threads)
        for _ in range(args.clients)
    ]
    parts = [f.result() for f in futures]
    merged = DriveResult(samples=[s for p in parts for s in p.samples])
    merged.failed = sum(p.failed for p in parts)
    merged.errors = [e for p in parts for e in p.errors][:5]
    return merged, args.duration, server.cpu_seconds() - cpu0  # each sends for that long


def measure(info: Any, example: Example, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    store, (version,) = write_versions(workdir / f"store-{example.name}", example, 1)
    with open_pointer(info, store, example.learning) as pointer:
        pointer.promote(example.model, version, actor="bench", reason="benchmark")
    loader = StoreLoader(store, example.learning)
    try:
        anchors = anchor(loader, example, version, args.calls)
    finally:
        loader.close()
    logging_path = log_path(info, example, workdir, args.log_events)
    servers = {
        mode: ServeProcess(info, example, store, workdir, f"{example.name}-log-{mode}", env)
        for mode, env in MODES.items()
    }
    rows: dict[str, Any] = {}
    with (
        serving(list(servers.values())),
        ProcessPoolExecutor(args.clients, mp_context=get_context("spawn")) as pool,
    ):
        for s in servers.values():
            s.wait_live(version)
        for batch in BATCHES:
            body = predict_body(example, batch)
            rounds: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
            for s in servers.values():  # warm: connections, first requests
                load(pool, s, body, argparse.Namespace(**{**vars(args), "duration": 0.5}))
            for _ in range(args.rounds):
                for mode, server in servers.items():
                    result, elapsed, cpu = load(pool, server, body, args)
                    lat = [lat for _, lat in result.samples]
                    rounds[mode].append(
                        {
                            "requests_per_s": len(lat) / elapsed,
                            "server_cpu_ms_per_request": cpu / max(len(lat), 1) * 1e3,
                            "p50_ms": pct(lat, 0.5) * 1e3,
                            "p99_ms": pct(lat, 0.99) * 1e3,
                            "failed": result.failed,
                        }
                    )
            cell: dict[str, Any] = {}
            for mode in MODES:
                rs = rounds[mode]
                rps = statistics.median(r["requests_per_s"] for r in rs)
                cell[f"log_{mode}"] = {
                    "requests_per_s": rps,
                    "instances_per_s": rps * batch,
                    "p50_ms": statistics.median(r["p50_ms"] for r in rs),
                    "p99_ms": statistics.median(r["p99_ms"] for r in rs),
                    "server_cpu_ms_per_request": statistics.median(
                        r["server_cpu_ms_per_request"] for r in rs
                    ),
                    "failed": sum(int(r["failed"]) for r in rs),
                }
            cell["log_cost"] = statistics.median(
                1 - on["requests_per_s"] / off["requests_per_s"]
                for on, off in zip(rounds["on"], rounds["off"], strict=True)
            )
            cell["log_cpu_cost"] = statistics.median(
                1 - off["server_cpu_ms_per_request"] / on["server_cpu_ms_per_request"]
                for on, off in zip(rounds["on"], rounds["off"], strict=True)
            )
            cell["predict_many_ms"] = anchors[batch] * 1e3
            cell["http_p50_over_predict_many"] = cell["log_on"]["p50_ms"] / (anchors[batch] * 1e3)
            rows[str(batch)] = cell
    rows["log_path"] = logging_path
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=2, help="load client processes")
    parser.add_argument("--threads", type=int, default=2, help="threads per client process")
    parser.add_argument("--calls", type=int, default=500, help="predict_many calls (anchor)")
    parser.add_argument("--log-events", type=int, default=5000, help="log path anchor events")
    parser.add_argument("--example", action="append", choices=["river_logreg", "torch_fm"])
    parser.add_argument("--dir", default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    names = args.example or ["river_logreg", "torch_fm"]
    workdir = Path(tempfile.mkdtemp(prefix="driftloop-bench-predict-", dir=args.dir))
    results: dict[str, Any] = {
        "clients": args.clients,
        "threads": args.threads,
        "duration_s": args.duration,
        "rounds": args.rounds,
    }
    try:
        with EmbeddedStack() as info:
            for name in names:
                results[name] = measure(info, Example.of(name), workdir, args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    table = [
        f"predict over HTTP, {args.clients} clients x {args.threads} threads, closed loop,"
        f" {args.duration:g} s x {args.rounds} rounds (medians)",
        f"{'example':13} {'batch':>5} {'log':>4} {'req/s':>8} {'inst/s':>9} {'p50 ms':>8}"
        f" {'p99 ms':>8} {'cpu ms/req':>10} {'failed':>6}",
    ]
    for name in names:
        for batch in map(str, BATCHES):
            cell = results[name][batch]
            for mode in MODES:
                r = cell[f"log_{mode}"]
                table.append(
                    f"{name:13} {batch:>5} {mode:>4} {r['requests_per_s']:8.0f}"
                    f" {r['instances_per_s']:9.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f}"
                    f" {r['server_cpu_ms_per_request']:10.3f} {r['failed']:>6}"
                )
            table.append(
                f"{'':13} {batch:>5}  logging costs {cell['log_cost'] * 100:5.1f}% of req/s"
                f" and {cell['log_cpu_cost'] * 100:4.1f}% of the server's CPU per request;"
                f" predict_many alone {cell['predict_many_ms']:.3f} ms,"
                f" HTTP p50 = {cell['http_p50_over_predict_many']:.0f}x that"
                " (Decision Service: 0.2 ms)"
            )
    for name in names:
        lp = results[name]["log_path"]
        table.append(
            f"{name:13} logging path per prediction, in process: InferenceLog build"
            f" {lp['build_us']:.0f} us, publish (in the request) {lp['publish_us']:.0f} us,"
            f" publish + send to the broker {lp['publish_and_send_us']:.0f} us"
        )
    emit(results, args.json, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
