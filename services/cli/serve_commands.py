"""``driftloop serve``: run a model server (FastAPI under uvicorn) in this process."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="Model configuration (TOML); default DRIFTLOOP_WORKER_MODELS."),
]
StoreOpt = Annotated[
    Path | None,
    typer.Option(
        "--store", help="Checkpoint store root (opened read-only); default DRIFTLOOP_STORE_ROOT."
    ),
]
ModelsOpt = Annotated[
    list[str] | None,
    typer.Option("--model", help="Serve only this model of the configuration (repeatable)."),
]
HostOpt = Annotated[str | None, typer.Option("--host", help="Default DRIFTLOOP_SERVER_HOST.")]
PortOpt = Annotated[int | None, typer.Option("--port", help="Default DRIFTLOOP_SERVER_PORT.")]
ServerIdOpt = Annotated[
    str | None,
    typer.Option(
        "--server-id", help="This replica's id; default DRIFTLOOP_SERVER_SERVER_ID, else host-pid."
    ),
]

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def serve(
    config: ConfigOpt = None,
    store: StoreOpt = None,
    model: ModelsOpt = None,
    host: HostOpt = None,
    port: PortOpt = None,
    server_id: ServerIdOpt = None,
) -> None:
    """Serve predictions for the configured models until SIGINT/SIGTERM.

    Loads the live, canary and shadow versions the Redis pointer names from the
    checkpoint store (read-only, every manifest's signature checked), follows
    pointer changes (the version channel, plus a pointer read every
    DRIFTLOOP_SERVER_POLL_INTERVAL_S), logs every prediction to
    inference-logs, and relays pointer changes left in the Redis outbox to
    version-events every DRIFTLOOP_SERVER_RELAY_INTERVAL_S. Settings:
    DRIFTLOOP_SERVER_*, DRIFTLOOP_REDIS_*, DRIFTLOOP_KAFKA_*, DRIFTLOOP_TOPIC_*,
    DRIFTLOOP_STORE_* (readers need only trusted public keys).
    """
    import uvicorn

    from schemas.errors import ConfigError
    from services.checkpoints.config import StoreConfig
    from services.config import KafkaConfig, RedisConfig, TopicsConfig
    from services.learning.config import load_config
    from services.server.app import create_app
    from services.server.config import ServerConfig
    from services.server.wiring import build_server, make_publisher

    updates: dict[str, object] = {}
    if host is not None:
        updates["host"] = host
    if port is not None:
        updates["port"] = port
    if server_id is not None:
        updates["server_id"] = server_id
    settings = ServerConfig(**updates)  # type: ignore[arg-type]  # validated by pydantic
    logging.basicConfig(level=settings.log_level.upper(), format=_LOG_FORMAT)
    models_path = config
    if models_path is None:
        import os

        env = os.environ.get("DRIFTLOOP_WORKER_MODELS")
        if not env:
            raise ConfigError("no model configuration: give --config or DRIFTLOOP_WORKER_MODELS")
        models_path = Path(env)
    learning = load_config(models_path)
    store_config = StoreConfig(root=store) if store is not None else StoreConfig()
    redis_config = RedisConfig()
    if not redis_config.url:
        raise ConfigError("a model server needs Redis: set DRIFTLOOP_REDIS_URL")
    ctx = build_server(
        settings,
        learning,
        store_config,
        redis_config,
        lambda registry: make_publisher(
            KafkaConfig(), TopicsConfig(), settings.spool_path, registry
        ),
        models=tuple(model or ()),
        kafka=KafkaConfig(),
        topics=TopicsConfig(),
    )
    app = create_app(ctx)
    _one_torch_thread()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=10,
    )


def _one_torch_thread() -> None:
    """One intra-op thread for torch models (when torch is loaded at all).

    A server runs many small predicts side by side, on the event loop for up to
    ``INLINE_INSTANCES`` instances: torch's intra-op pool (one thread per core
    by default) then spun beside the loop, and batches of 32 of the torch
    example took 20-24 ms of server CPU each and 7 per second were answered on
    the shared 2-core machine; with one thread 1.5-2.0 ms and 120-220.
    """
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def register(app: typer.Typer) -> None:
    """Add ``serve`` to the ``driftloop`` command line."""
    app.command("serve")(serve)
