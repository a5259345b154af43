"""The ``driftloop`` command line.

Each concern registers its commands from its own module; this module only
assembles them. Every read command takes ``--json``. A setting that cannot
work, in any command, is one line on stderr and exit code 2
(:class:`~services.cli.errors.DriftloopGroup`).
"""

from __future__ import annotations

import typer

from services.cli.errors import DriftloopGroup

app = typer.Typer(
    name="driftloop",
    cls=DriftloopGroup,
    help="Event-driven online learning with recoverable, auditable checkpoints.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def _root() -> None:
    """Event-driven online learning with recoverable, auditable checkpoints."""


def _register() -> None:
    from services.cli import (
        checkpoint_commands,
        demo_commands,
        pointer_commands,
        serve_commands,
        stack_commands,
        worker_commands,
    )

    stack_commands.register(app)
    demo_commands.register(app)
    worker_commands.register(app)
    checkpoint_commands.register(app)
    pointer_commands.register(app)
    serve_commands.register(app)


_register()


def main() -> None:
    app()
