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
the cores among server, clients, broker and the rest). So is the broker's
(the embedded Tansu's) CPU per request meanwhile: the work of ingesting the
logs, which shares the cores with the server and the clients
(``broker_cpu_ms_per_request``; with logging off it is what the server's
pointer follower asks of it).

Anchor: the in-process ``adapter.predict_many`` time alone on the same
batches (median of ``--calls`` calls, on a worker thread as the server runs
it; the adapter loaded through the server's loader). The Decision Service
paper's decisions took 0.2 ms; ``http_p50 / predict_many`` is what HTTP,
validation, routing and logging add around the model. A second anchor, the
server's logging path alone in process (``--log-events`` logs, in requests of
32, with the example's real predictions): microseconds per prediction to
encode its log as a request does (:class:`~services.server.logs.RequestLogs`),
to hand a request's logs to the server's publisher in one ``publish_records``
call (what the request waits for), and to have them sent to the embedded
broker (``flush``); plus the CPU per prediction of the whole path, the
publisher's sender thread and librdkafka's threads included.

Run: ``python -m benchmarks.predict [--duration 2] [--rounds 2] [--clients 2]
[--threads 2] [--json]`` (about 80 s by default).
"""

from __future__ import annotations

import argparse
import gc
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

import psutil  # type: ignore[import-untyped]  # no stubs installed; benchmarks only
from prometheus_client import CollectorRegistry

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
from services.server.loader import StoreLoader
from services.server.logs import RequestLogs, Templates, contract_prediction, contract_scores
from services.server.wiring import make_publisher
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


def log_path(
    info: Any, loader: StoreLoader, example: Example, version: str, workdir: Path, count: int
) -> dict[str, float]:
    """Per prediction, the server's logging path alone, in process, for requests of 32
    instances: CPU microseconds to encode the request's logs (``RequestLogs.add`` of the
    example's real predictions) and to hand them to the server's publisher in one
    ``publish_records`` call (both on the request's thread: what a request pays), the
    CPU of all threads (sender thread and librdkafka's included) until the broker
    acknowledged them (``flush``), and the wall time until then."""
    feats = [i["features"] for i in features(example, 32)]
    predictions = loader.load(example.model, version).predict_many(feats)
    made = [(contract_prediction(p.value), contract_scores(p)) for p in predictions]
    topic = info.topics.name(InferenceLog.topic)
    templates: Templates = {}
    requests = max(1, count // len(feats))
    ids = [[uuid.uuid4().hex for _ in feats] for _ in range(requests)]
    spool = workdir / f"spool-logpath-{example.name}"
    publisher = make_publisher(info.kafka_config(), info.topics, spool, CollectorRegistry())
    try:
        warm = RequestLogs(templates, example.model, "bench", topic)  # first use: templates,
        for x, (value, scores) in zip(feats, made, strict=True):  # lazy imports
            warm.add(version, "live", uuid.uuid4().hex, x, value, scores)
        gc.collect()  # not this process's load results: a server's heap is its own
        cpu0 = time.process_time()
        start = time.thread_time()
        batches = []
        for rids in ids:
            logs = RequestLogs(templates, example.model, "bench", topic)
            for rid, x, (value, scores) in zip(rids, feats, made, strict=True):
                logs.add(version, "live", rid, x, value, scores)
            batches.append(logs.records)
        encode = time.thread_time() - start
        wall = time.perf_counter()
        start = time.thread_time()
        for records in batches:
            publisher.publish_records(records, InferenceLog)
        enqueue = time.thread_time() - start
        publisher.flush(120.0)
        sent = time.perf_counter() - wall
        cpu = time.process_time() - cpu0
    finally:
        publisher.close()
    n = requests * len(feats)
    return {
        "encode_cpu_us": encode / n * 1e6,
        "publish_cpu_us": enqueue / n * 1e6,
        "total_cpu_us": cpu / n * 1e6,
        "until_acknowledged_us": sent / n * 1e6,
    }


def load(
    pool: ProcessPoolExecutor,
    server: ServeProcess,
    body: bytes,
    args: argparse.Namespace,
    broker: psutil.Process,
) -> tuple[DriveResult, float, float, float]:
    """All clients against ``server`` for ``args.duration`` s: merged result, seconds,
    the CPU seconds the server process used meanwhile (all its threads), and those the
    broker used."""
    cpu0 = server.cpu_seconds()
    broker0 = _cpu(broker)
    futures = [
        pool.submit(drive, server.url, server.predict_path, body, args.duration, args.threads)
        for _ in range(args.clients)
    ]
    parts = [f.result() for f in futures]
    merged = DriveResult(samples=[s for p in parts for s in p.samples])
    merged.failed = sum(p.failed for p in parts)
    merged.errors = [e for p in parts for e in p.errors][:5]
    # each client sends for args.duration
    return merged, args.duration, server.cpu_seconds() - cpu0, _cpu(broker) - broker0


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def measure(info: Any, example: Example, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    store, (version,) = write_versions(workdir / f"store-{example.name}", example, 1)
    with open_pointer(info, store, example.learning) as pointer:
        pointer.promote(example.model, version, actor="bench", reason="benchmark")
    loader = StoreLoader(store, example.learning)
    try:
        anchors = anchor(loader, example, version, args.calls)
        logging_path = log_path(info, loader, example, version, workdir, args.log_events)
    finally:
        loader.close()
    broker = psutil.Process(info.pids["kafka"])
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
                load(pool, s, body, argparse.Namespace(**{**vars(args), "duration": 0.5}), broker)
            for _ in range(args.rounds):
                for mode, server in servers.items():
                    result, elapsed, cpu, broker_cpu = load(pool, server, body, args, broker)
                    lat = [lat for _, lat in result.samples]
                    rounds[mode].append(
                        {
                            "requests_per_s": len(lat) / elapsed,
                            "server_cpu_ms_per_request": cpu / max(len(lat), 1) * 1e3,
                            "broker_cpu_ms_per_request": broker_cpu / max(len(lat), 1) * 1e3,
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
                    "broker_cpu_ms_per_request": statistics.median(
                        r["broker_cpu_ms_per_request"] for r in rs
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
        f" {'p99 ms':>8} {'cpu ms/req':>10} {'broker ms':>9} {'failed':>6}",
    ]
    for name in names:
        for batch in map(str, BATCHES):
            cell = results[name][batch]
            for mode in MODES:
                r = cell[f"log_{mode}"]
                table.append(
                    f"{name:13} {batch:>5} {mode:>4} {r['requests_per_s']:8.0f}"
                    f" {r['instances_per_s']:9.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f}"
                    f" {r['server_cpu_ms_per_request']:10.3f}"
                    f" {r['broker_cpu_ms_per_request']:9.3f} {r['failed']:>6}"
                )
            table.append(
                f"{'':13} {batch:>5}  logging costs {cell['log_cost'] * 100:5.1f}% of req/s"
                f" and {cell['log_cpu_cost'] * 100:4.1f}% of the server's CPU per request;"
                f" predict_many alone {cell['predict_many_ms']:.3f} ms,"
                f" HTTP p50 = {cell['http_p50_over_predict_many']:.0f}x that"
                " (Decision Service: 0.2 ms)"
            )
            table.append(
                f"{'':13} {batch:>5}  the broker's CPU per request: on"
                f" {cell['log_on']['broker_cpu_ms_per_request']:.3f} ms, off"
                f" {cell['log_off']['broker_cpu_ms_per_request']:.3f} ms"
            )
    for name in names:
        lp = results[name]["log_path"]
        table.append(
            f"{name:13} server logging path per prediction, in process: encode"
            f" {lp['encode_cpu_us']:.2f} us CPU, publish_records (in the request)"
            f" {lp['publish_cpu_us']:.2f} us CPU; all threads until acknowledged"
            f" {lp['total_cpu_us']:.2f} us CPU ({lp['until_acknowledged_us']:.0f} us wall)"
        )
    emit(results, args.json, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
