"""Commands that run the embedded stack: ``up`` and ``demo``."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the stack commands to the root ``driftloop`` app."""
