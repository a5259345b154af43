"""Shared parts of the serving tests: trained checkpoints, ``driftloop serve`` and CLI processes.

- :func:`train_versions`: three checkpoints of the shipped river example written by
  the project's own trainer and checkpointer (signed with the session key of
  tests/conftest.py);
- :class:`Server`: one ``driftloop serve`` subprocess on a free port and an HTTP
  client for it; :func:`server_env` its environment (sandbox prefixes, short intervals);
- :func:`cli`: one ``driftloop`` command as a subprocess (the path users take);
- :func:`set_pointer`: the pointer written the way the contract's writer does,
  for tests of the server alone;
- :func:`predict_instances`: predict bodies from the Phishing data set;
- :func:`start_redis`: a redis-server of a test's own (no persistence), for tests
  that flush, pause or restart Redis (the session's is shared by every test).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import redis
from river import datasets

from services.checkpoints.checkpointer import Checkpointer, CheckpointerConfig
from services.checkpoints.config import StoreConfig
from services.checkpoints.store import CheckpointStore
from services.learning.config import example_path, load_config
from services.learning.store_sink import CheckpointerSink
from services.learning.synthetic import examples_from
from services.learning.trainer import OnlineTrainer
from services.pointer.base import channel_name, history_key, pointer_key, servers_key
from services.stack.binaries import redis_binary
from services.stack.process import ChildProcess, free_port

if TYPE_CHECKING:
    from tests.integration.conftest import Sandbox

MODEL = "river-logreg"
CONFIG = example_path("river_logreg")
DRIFTLOOP = [sys.executable, "-c", "from services.cli import main; main()"]
SERVE = [*DRIFTLOOP, "serve"]


@dataclass
class Versions:
    store: Path
    names: list[str]


def train_versions(store: Path) -> Versions:
    """Three checkpoints of the shipped river example, trained on more data each time."""
    config = load_config(CONFIG).model(MODEL)
    sink = CheckpointerSink(
        Checkpointer(
            CheckpointStore(StoreConfig(root=store, fsync=False)),
            CheckpointerConfig(async_saves=False),
        )
    )
    trainer = OnlineTrainer(config, sink)
    names = []
    exs = list(examples_from(datasets.Phishing(), MODEL, limit=600))
    for i, ex in enumerate(exs):
        trainer.process(ex, topic="training-examples", partition=0, offset=i)
        if i in (199, 399, 599):
            names.append(trainer.checkpoint("manual", "test").version)
    return Versions(store, names)


def set_pointer(
    client: redis.Redis[str],
    prefix: str,
    epoch: int,
    *,
    publish: bool = True,
    history: tuple[str, ...] = (),
    **fields: str,
) -> None:
    """Write the pointer as the contract's writer would (one MULTI), then hint."""
    values = {"live": "", "previous": "", "canary": "", "canary_percent": "0", "shadow": ""}
    values |= fields | {"epoch": str(epoch)}
    pipe = client.pipeline(transaction=True)
    pipe.hset(pointer_key(prefix, MODEL), mapping=values)
    pipe.delete(history_key(prefix, MODEL))
    if history:
        pipe.rpush(history_key(prefix, MODEL), *history)
    pipe.execute()
    if publish:
        client.publish(channel_name(prefix, MODEL), str(epoch))


class Server:
    """One ``driftloop serve`` subprocess and an HTTP client for it."""

    def __init__(self, env: dict[str, str], store: Path, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.server_id = f"it-{self.port}"
        argv = [*SERVE, "--config", str(CONFIG), "--store", str(store)]
        argv += ["--port", str(self.port), "--server-id", self.server_id]
        with log.open("ab") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30.0)

    def get(self, path: str) -> httpx.Response:
        return self.http.get(path)

    def predict(self, instances: list[dict[str, Any]]) -> httpx.Response:
        return self.http.post(f"/v1/models/{MODEL}:predict", json={"instances": instances})

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = self.get(f"/v1/models/{MODEL}").json()
        return body

    def wait(self, cond: Callable[[], bool], what: str, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.output()}")
            try:
                if cond():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}:\n{self.output()[-3000:]}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM and wait; the exit status (uvicorn re-raises SIGTERM after a
        graceful shutdown, so -15 is a clean stop when the log says so)."""
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return -9
        return self.proc.returncode


def server_env(sandbox: Sandbox, store: Path, redis_url: str, **extra: str) -> dict[str, str]:
    """A server's (and the CLI's) environment: the sandbox's prefixes, short intervals."""
    env = dict(os.environ)
    env.update(sandbox.stack.env())
    env.update(
        {
            "DRIFTLOOP_REDIS_URL": redis_url,
            "DRIFTLOOP_REDIS_KEY_PREFIX": sandbox.redis.key_prefix,
            "DRIFTLOOP_REDIS_SOCKET_TIMEOUT_S": "1",
            "DRIFTLOOP_TOPIC_PREFIX": sandbox.topics.prefix,
            "DRIFTLOOP_STORE_ROOT": str(store),
            "DRIFTLOOP_WORKER_MODELS": str(CONFIG),
            "DRIFTLOOP_SERVER_POLL_INTERVAL_S": "0.5",
            "DRIFTLOOP_SERVER_REPORT_INTERVAL_S": "0.5",
            "DRIFTLOOP_SERVER_RELAY_INTERVAL_S": "1",
            "DRIFTLOOP_SERVER_SPOOL_DIR": str(store.parent / f"spool-{uuid.uuid4().hex[:8]}"),
        }
    )
    env.update(extra)
    return env


@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.code == 0, f"exit {self.code}: {self.stderr}"
        return json.loads(self.stdout)


def cli(env: dict[str, str], *args: str, timeout_s: float = 300.0) -> CliResult:
    """Run ``driftloop ARGS`` as a subprocess with ``env``."""
    done = subprocess.run(
        [*DRIFTLOOP, *args], env=env, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    return CliResult(done.returncode, done.stdout, done.stderr)


def reported(client: redis.Redis[str], prefix: str, server_id: str) -> dict[str, int] | None:
    """What ``server_id`` last wrote in the model's servers hash (None: nothing)."""
    raw = client.hget(servers_key(prefix, MODEL), server_id)
    return None if raw is None else dict(json.loads(raw))


def reported_ts(client: redis.Redis[str], prefix: str, server_id: str) -> int:
    report = reported(client, prefix, server_id)
    return 0 if report is None else int(report["ts"])


def predict_instances(n: int, prefix: str) -> list[dict[str, Any]]:
    """``n`` Phishing feature sets as predict instances with request ids ``{prefix}-{i}``."""
    exs = list(examples_from(datasets.Phishing(), MODEL, limit=n))
    return [
        {"request_id": f"{prefix}-{i}", "features": dict(e.features)} for i, e in enumerate(exs)
    ]


def start_redis(port: int, workdir: Path) -> ChildProcess:
    """A redis-server of a test's own, no persistence: a restart comes back empty."""
    workdir.mkdir(exist_ok=True)
    argv = [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(workdir), "--daemonize", "no"]
    child = ChildProcess("redis", argv, workdir / f"redis-{port}.log", port)
    client: redis.Redis[str] = redis.Redis(port=port, decode_responses=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or child.exit_code() is not None:
                raise AssertionError(child.output_tail()) from None
            time.sleep(0.05)
    client.close()
    return child
