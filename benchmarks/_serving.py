"""Helpers shared by the serving benchmarks (``rollback``, ``predict``, ``swap``).

- :func:`write_versions`: real signed checkpoints of a shipped example, written
  by the project's trainer and checkpointer into a fresh store;
- :class:`ServeProcess`: one ``driftloop serve`` subprocess on a free loopback
  port, pointed at an :class:`~services.stack.EmbeddedStack`;
- :func:`open_pointer`: the pointer the CLI changes (``RedisPointer`` with the
  store's version check), for timing the library call the CLI makes;
- :func:`drive`: a closed-loop HTTP load client (httpx, keep-alive), run in a
  separate process so the client's interpreter does not share the server's GIL
  nor the benchmark's.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil  # type: ignore[import-untyped]  # no stubs installed; benchmarks only
from river import datasets

from benchmarks._common import signing_env, store_config
from services.checkpoints.checkpointer import Checkpointer, CheckpointerConfig
from services.checkpoints.config import StoreConfig
from services.checkpoints.opener import open_store
from services.checkpoints.store import CheckpointStore
from services.learning.adapters import TorchAdapter, build_predictor
from services.learning.config import LearningConfig, example_path, load_config
from services.learning.store_sink import CheckpointerSink
from services.learning.synthetic import examples_from
from services.learning.trainer import OnlineTrainer
from services.pointer.factory import pointer_for_changes
from services.pointer.redis import RedisPointer
from services.pointer.validation import StoreVersionCheck
from services.stack import StackInfo
from services.stack.process import free_port

ROOT = Path(__file__).resolve().parent.parent
SERVE = [sys.executable, "-c", "from services.cli import main; main()", "serve"]


def server_env(pairs: Sequence[str] | None) -> dict[str, str]:
    """``--server-env KEY=VALUE`` options as a dict (extra settings for every server)."""
    out: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.startswith("DRIFTLOOP_"):
            raise SystemExit(f"--server-env wants DRIFTLOOP_NAME=VALUE, got {pair!r}")
        out[key] = value
    return out


@dataclass(frozen=True)
class Example:
    """A shipped example: its configuration file, parsed, and its one model's name."""

    name: str
    path: Path
    learning: LearningConfig
    model: str

    @classmethod
    def of(cls, name: str) -> Example:
        path = example_path(name)
        learning = load_config(path)
        return cls(name, path, learning, learning.models[0].name)

    @classmethod
    def torch_sized(cls, directory: Path, buckets: int, factors: int) -> Example:
        """The ``torch_fm`` example with ``buckets`` rows and ``factors`` latent
        dimensions (its shipped file with those two values changed, written to
        ``directory``): ``buckets x (factors + 1) + 1`` parameters."""
        text = example_path("torch_fm").read_text(encoding="utf-8")
        text, rows = re.subn(r"(?m)^buckets = \d+", f"buckets = {buckets}", text)
        text, dims = re.subn(r"\bfactors = \d+", f"factors = {factors}", text)
        if rows != 1 or dims != 1:
            raise SystemExit("torch_fm.toml no longer has one 'buckets =' and one 'factors ='")
        path = directory / f"torch_fm-{buckets}x{factors}.toml"
        path.write_text(text, encoding="utf-8")
        learning = load_config(path)
        model = learning.models[0]
        rows_got = model.encoding.buckets if model.encoding else None
        got = (rows_got, model.factory.params.get("factors"))
        if got != (buckets, factors):
            raise SystemExit(f"{path} did not parse to {buckets} buckets x {factors} factors")
        return cls(f"torch_fm {buckets:,}x{factors}", path, learning, model.name)

    def size(self) -> tuple[int, int]:
        """(parameters, bytes of parameter tensors) of one version as a server holds it
        (torch: the module's parameters and buffers; river: the pickled model)."""
        adapter = build_predictor(self.learning.model(self.model))
        if isinstance(adapter, TorchAdapter):
            tensors = [*adapter.module.parameters(), *adapter.module.buffers()]
            params = sum(t.numel() for t in adapter.module.parameters())
            return params, sum(t.numel() * t.element_size() for t in tensors)
        return 0, 0


def add_example_options(
    parser: argparse.ArgumentParser, *, buckets: int = 0, factors: int = 0
) -> None:
    """``--example``, and for ``torch_fm`` its size: ``--buckets`` / ``--factors``
    (0: as shipped; the defaults given here otherwise)."""
    parser.add_argument("--example", default="torch_fm", choices=["torch_fm", "river_logreg"])
    parser.add_argument(
        "--buckets",
        type=int,
        default=buckets,
        help=f"torch_fm: rows of its tables (default {buckets or 'as shipped'}; 0: as shipped)",
    )
    parser.add_argument(
        "--factors",
        type=int,
        default=factors,
        help=f"torch_fm: latent dimensions (default {factors or 'as shipped'}; 0: as shipped)",
    )


def example_of(args: argparse.Namespace, directory: Path) -> Example:
    """The example ``add_example_options``' options name (a resized copy in ``directory``)."""
    shipped = Example.of(args.example)
    if args.example != "torch_fm" or not (args.buckets or args.factors):
        return shipped
    config = shipped.learning.model(shipped.model)
    buckets = args.buckets or (config.encoding.buckets if config.encoding else 0)
    factors = args.factors or int(config.factory.params.get("factors", 8))
    return Example.torch_sized(directory, buckets, factors)


def size_line(example: Example) -> str:
    """``"torch_fm 1,048,576x15: 16.8M parameters, 64.0 MiB per version"``."""
    params, nbytes = example.size()
    if not params:
        return f"{example.name}: river model"
    return f"{example.name}: {params / 1e6:.1f}M parameters, {nbytes / 2**20:.1f} MiB per version"


def write_versions(
    root: Path, example: Example, count: int, *, every: int = 100
) -> tuple[StoreConfig, list[str]]:
    """``count`` checkpoints of ``example``'s model, ``every`` Phishing examples apart."""
    config = store_config(root, fsync=False)
    sink = CheckpointerSink(
        Checkpointer(CheckpointStore(config), CheckpointerConfig(async_saves=False))
    )
    trainer = OnlineTrainer(example.learning.model(example.model), sink)
    versions: list[str] = []
    data = examples_from(datasets.Phishing(), example.model, limit=count * every)
    for i, ex in enumerate(data):
        trainer.process(ex, topic="t", partition=0, offset=i)
        if (i + 1) % every == 0:
            versions.append(trainer.checkpoint("manual", "benchmark").version)
    if len(versions) < count:  # Phishing has 1,250 rows: go round again
        raise SystemExit(f"only {len(versions)} versions written; lower --every or the count")
    return config, versions


def features(example: Example, n: int) -> list[dict[str, Any]]:
    """``n`` Phishing instances as predict-request instances (no request id)."""
    return [
        {"features": dict(e.features)}
        for e in examples_from(datasets.Phishing(), example.model, limit=n)
    ]


def predict_body(example: Example, batch: int) -> bytes:
    return orjson.dumps({"instances": features(example, batch)})


@contextmanager
def open_pointer(
    info: StackInfo, store: StoreConfig, learning: LearningConfig
) -> Iterator[RedisPointer]:
    """The pointer ``driftloop promote/rollback`` changes: store check, version-events log."""
    with open_store(store, learning, read_only=True) as s:
        pointer = pointer_for_changes(
            store,
            StoreVersionCheck(s.reader),
            redis_config=info.redis_config(),
            kafka=info.kafka_config(),
            topics=info.topics,
        )
        try:
            yield pointer
        finally:
            pointer.client.close()


@dataclass
class ServeProcess:
    """One ``driftloop serve`` subprocess (output in ``log``)."""

    info: StackInfo
    example: Example
    store: StoreConfig
    workdir: Path
    name: str
    settings: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServeProcess:
        self.port = free_port()
        env = dict(os.environ) | self.info.env() | signing_env(self.store.root)
        inherited = os.environ.get("PYTHONPATH")
        env |= {
            # This checkout first; what the caller's PYTHONPATH adds stays reachable after it.
            "PYTHONPATH": os.pathsep.join([str(ROOT), *([inherited] if inherited else [])]),
            "DRIFTLOOP_STORE_ROOT": str(self.store.root),
            "DRIFTLOOP_SERVER_SPOOL_DIR": str(self.workdir / f"spool-{self.name}"),
            "DRIFTLOOP_SERVER_LOG_LEVEL": "warning",
        } | self.settings
        argv = [*SERVE, "--config", str(self.example.path), "--store", str(self.store.root)]
        argv += ["--port", str(self.port), "--server-id", f"bench-{self.name}"]
        with (self.workdir / f"{self.name}.log").open("ab") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def predict_path(self) -> str:
        return f"/v1/models/{self.example.model}:predict"

    def output(self) -> str:
        return (self.workdir / f"{self.name}.log").read_text(errors="replace")

    def wait_until(self, what: str, cond: Any, timeout_s: float = 180.0) -> None:
        """Poll ``cond(client)`` until true (the process must stay up)."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.url, timeout=10.0) as client:
            while time.monotonic() < deadline:
                if self.proc is None or self.proc.poll() is not None:
                    raise SystemExit(f"server {self.name} exited:\n{self.output()[-3000:]}")
                try:
                    if cond(client):
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
        raise SystemExit(
            f"server {self.name}: timed out waiting for {what}\n{self.output()[-3000:]}"
        )

    def wait_live(self, version: str, resident: int | None = None) -> None:
        """Until the server's status names ``version`` live (and ``resident`` versions loaded)."""
        path = f"/v1/models/{self.example.model}"

        def ok(client: httpx.Client) -> bool:
            body = client.get(path).json()
            return bool(
                body.get("live") == version
                and (resident is None or len(body.get("resident", [])) >= resident)
            )

        self.wait_until(f"live={version}", ok)

    def rss(self) -> int:
        """Resident set size of the server process, bytes."""
        if self.proc is None:
            raise SystemExit(f"server {self.name} was not started")
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the server process used so far (all threads)."""
        if self.proc is None:
            raise SystemExit(f"server {self.name} was not started")
        times = psutil.Process(self.proc.pid).cpu_times()
        return float(times.user + times.system)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def serving(servers: Sequence[ServeProcess]) -> Iterator[Sequence[ServeProcess]]:
    """Start ``servers``; stop every one on the way out, whatever happened."""
    try:
        for s in servers:
            s.start()
        yield servers
    finally:
        for s in servers:
            s.stop()


@dataclass
class DriveResult:
    """What one load client saw: (start, latency) per request, and what went wrong."""

    samples: list[tuple[float, float]]
    failed: int = 0
    half_swapped: int = 0
    errors: list[str] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)


def check_response(body: dict[str, Any], allowed: frozenset[str]) -> str | None:
    """What is wrong with a predict response, or None: every live prediction must name
    the response's ``model_version``, one of ``allowed`` (when given)."""
    top = body.get("model_version")
    if allowed and top not in allowed:
        return f"version {top!r} not one of the benchmark's"
    named = {
        p.get("model_version") for p in body.get("predictions", ()) if p.get("route") == "live"
    }
    if named and named != {top}:
        return f"one batch served by {sorted(map(str, named))} (top-level {top!r})"
    return None


def drive(
    url: str,
    path: str,
    body: bytes,
    duration_s: float,
    threads: int = 1,
    allowed: Sequence[str] = (),
    *,
    rate: float = 0.0,
    stop: Any = None,
) -> DriveResult:
    """POST ``body`` to ``url + path`` from ``threads`` threads (one keep-alive httpx
    client each) for ``duration_s`` or until ``stop`` (an Event) is set, checking every
    response. ``rate`` > 0: each thread paces itself to ``rate`` requests/s (a request
    that is late goes at once, and its latency counts from when it was due);
    0: closed loop, the next request as soon as one answered.
    ``samples``: (start, seconds) per answered request, ``time.monotonic`` clock
    (comparable across processes on Linux)."""
    ok_versions = frozenset(allowed)
    result = DriveResult(samples=[])
    lock = threading.Lock()
    stop_at = time.monotonic() + duration_s
    headers = {"content-type": "application/json"}

    def over() -> bool:
        return time.monotonic() >= stop_at or (stop is not None and stop.is_set())

    def loop() -> None:
        samples: list[tuple[float, float]] = []
        failed = half = 0
        errors: list[str] = []
        seen: dict[str, int] = {}
        due = time.monotonic()
        with httpx.Client(base_url=url, timeout=30.0) as client:
            while not over():
                if rate > 0:
                    due += 1.0 / rate
                    wait = due - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                # Paced: latency counts from when the request was due, so a stall on the
                # server shows in full (no coordinated omission); closed loop: from sending.
                start = min(due, time.monotonic()) if rate > 0 else time.monotonic()
                try:
                    r = client.post(path, content=body, headers=headers)
                except httpx.HTTPError as exc:
                    failed += 1
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    continue
                samples.append((start, time.monotonic() - start))
                if r.status_code != 200:
                    failed += 1
                    errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
                    continue
                parsed = orjson.loads(r.content)
                wrong = check_response(parsed, ok_versions)
                if wrong is not None:
                    half += 1
                    errors.append(wrong)
                version = str(parsed.get("model_version"))
                seen[version] = seen.get(version, 0) + 1
        with lock:
            result.samples.extend(samples)
            result.failed += failed
            result.half_swapped += half
            result.errors.extend(errors[:5])
            for v, n in seen.items():
                result.versions[v] = result.versions.get(v, 0) + n

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return result


def _load_main(
    queue: Any, ready: Any, stop: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    ready.set()  # imports done: the first request goes now
    queue.put(drive(*args, stop=stop, **kwargs))


class LoadProcess:
    """:func:`drive` in a child process (spawned) until :meth:`finish`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        self._ready = ctx.Event()
        self._queue: Any = ctx.Queue()
        kwargs.setdefault("duration_s", 3600.0)
        self._proc = ctx.Process(
            target=_load_main,
            args=(self._queue, self._ready, self._stop, args, kwargs),
            daemon=True,
        )
        self._proc.start()

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Until the child has imported everything and starts sending."""
        if not self._ready.wait(timeout_s):
            raise SystemExit("a load process did not start")

    def finish(self, timeout_s: float = 120.0) -> DriveResult:
        self._stop.set()
        try:
            result: DriveResult = self._queue.get(timeout=timeout_s)
        finally:
            self._proc.join(10)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()
        return result
