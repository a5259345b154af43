"""The ``driftloop`` command line.

Each concern registers its commands from its own module; this module only
assembles them. Every read command takes ``--json``. A setting that cannot
work, in any command, is one line on stderr and exit code 2
(:class:`~services.cli.errors.DriftloopGroup`).

:func:`main` imports only the module of the command it runs (``driftloop
worker`` does not import the pointer commands' Redis client nor the
checkpoint commands' tables): :data:`COMMAND_MODULES` says which module
registers each top-level command. The root help, a root option and an
unknown name get every command. ``services.cli.app`` is the app with every
command (built at its first use, for tests and tools).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable

import typer

from services.cli.errors import DriftloopGroup

#: The module of ``services.cli`` that registers each top-level command.
COMMAND_MODULES: dict[str, str] = {
    "up": "stack_commands",
    "demo": "demo_commands",
    "worker": "worker_commands",
    "checkpoints": "checkpoint_commands",
    "promote": "pointer_commands",
    "rollback": "pointer_commands",
    "canary": "pointer_commands",
    "shadow": "pointer_commands",
    "status": "pointer_commands",
    "pointer": "pointer_commands",
    "serve": "serve_commands",
}

#: Every command module, in the order their commands are listed in the help.
_MODULES = tuple(dict.fromkeys(COMMAND_MODULES.values()))


def build_app(modules: Iterable[str] = _MODULES) -> typer.Typer:
    """The ``driftloop`` app with the commands of ``modules`` (names of
    :data:`COMMAND_MODULES` values; default every one)."""
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

    for name in modules:
        importlib.import_module(f"services.cli.{name}").register(app)
    return app


def __getattr__(name: str) -> typer.Typer:
    if name == "app":
        app = build_app()
        globals()["app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    """Run ``driftloop`` with the command line of this process."""
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    module = COMMAND_MODULES.get(command)
    build_app([module] if module is not None else _MODULES)()
