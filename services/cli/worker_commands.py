"""``driftloop worker``: run the streaming agents in this process."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from schemas.errors import DriftloopError

RoleOpt = Annotated[
    str,
    typer.Option(
        "--role",
        help="Which agents to run: joiner, trainer, all (joiner and trainer) or gateway"
        " (the validation gateway and guard, in a process of its own; needs Redis).",
    ),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="Model configuration (TOML); default DRIFTLOOP_WORKER_MODELS."),
]
StoreOpt = Annotated[
    Path | None,
    typer.Option("--store", help="Checkpoint store root; default DRIFTLOOP_STORE_ROOT."),
]
ModelsOpt = Annotated[
    list[str] | None,
    typer.Option("--model", help="Train only this model of the configuration (repeatable)."),
]
AppIdOpt = Annotated[
    str | None,
    typer.Option(
        "--app-id", help="Consumer group (faust app id); default <prefix>driftloop-<role>."
    ),
]
LogLevelOpt = Annotated[
    str | None,
    typer.Option("--log-level", help="debug, info, warning; default DRIFTLOOP_WORKER_LOG_LEVEL."),
]
DatadirOpt = Annotated[
    Path | None,
    typer.Option(
        "--datadir",
        help="faust's local state directory; default DRIFTLOOP_WORKER_DATADIR, else a fresh"
        " driftloop-<role>-* directory in the system temp directory, removed on exit (and"
        " by the next start when the worker was killed).",
    ),
]

FromScratchOpt = Annotated[
    bool,
    typer.Option(
        "--from-scratch",
        help="Ignore the models' existing checkpoints and train from step 0 (only way to"
        " start over when none of them loads).",
    ),
]

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def worker(
    role: RoleOpt = "all",
    config: ConfigOpt = None,
    store: StoreOpt = None,
    model: ModelsOpt = None,
    app_id: AppIdOpt = None,
    log_level: LogLevelOpt = None,
    datadir: DatadirOpt = None,
    from_scratch: FromScratchOpt = False,
) -> None:
    """Run the attribution joiner and/or the online trainer until SIGINT/SIGTERM.

    Connection settings come from DRIFTLOOP_KAFKA_* and DRIFTLOOP_TOPIC_*
    (``driftloop up`` prints them); worker settings from DRIFTLOOP_WORKER_*
    (DRIFTLOOP_WORKER_DATADIR: see --datadir).

    Signals: SIGUSR1 checkpoints every model now (trigger "manual"); the
    checkpoint covers the examples the trainer has handled when it is taken,
    not those already fetched from Kafka but not yet trained on. SIGHUP
    reloads the model configuration. On SIGTERM the trainer checkpoints
    unsaved progress before the process exits.

    When a model's checkpoints exist but none loads, the worker exits 2
    naming each version and why; ``--from-scratch`` starts such models over
    instead.
    """
    from services.checkpoints.config import StoreConfig
    from streams.worker import ROLES, WorkerConfig, build, run

    if role not in ROLES:
        raise typer.BadParameter(f"--role must be one of {', '.join(ROLES)}")
    settings = WorkerConfig()
    if app_id is not None:
        settings = settings.model_copy(update={"app_id": app_id})
    if datadir is not None:
        settings = settings.model_copy(update={"datadir": datadir})
    level = log_level or settings.log_level
    logging.basicConfig(level=level.upper(), format=_LOG_FORMAT)
    try:
        built = build(
            role,  # type: ignore[arg-type]  # checked against ROLES above
            worker=settings,
            models_path=config,
            model_names=model or (),
            store=StoreConfig(root=store) if store is not None else None,
            from_scratch=from_scratch,
        )
    except DriftloopError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    run(built, log_level=level)


def register(app: typer.Typer) -> None:
    """Add ``worker`` to the ``driftloop`` command line."""
    app.command("worker")(worker)
