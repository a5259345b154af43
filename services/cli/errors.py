"""How the ``driftloop`` command line reports bad settings: one line, exit code 2.

:class:`DriftloopGroup` is the root command's class. Any command that hits a
setting that cannot work — a ``DRIFTLOOP_*`` variable pydantic refuses, a
:class:`~schemas.errors.DriftloopError`, an ``OSError`` such as a path that
is a file where a directory is needed — prints ``error: <setting>: <message>``
on stderr and exits 2 instead of dumping a traceback. The line names the
environment variable (``DRIFTLOOP_STORE_KEEP_LATEST``), never the value it
holds: a refused value may be a password.
"""

from __future__ import annotations

from typing import Any

import pydantic
import typer
from pydantic_settings import BaseSettings
from typer import _click  # typer vendors click: its Context is the one TyperGroup is given
from typer.core import TyperGroup

from schemas.errors import DriftloopError

#: What the root command turns into one line and exit code 2.
SETTINGS_ERRORS = (pydantic.ValidationError, DriftloopError, OSError)


class DriftloopGroup(TyperGroup):
    """The root ``driftloop`` group: settings errors of any command become one line + exit 2."""

    def invoke(self, ctx: _click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise  # `driftloop ... | head`: click handles it
        except SETTINGS_ERRORS as exc:
            typer.echo(f"error: {describe_error(exc)}", err=True)
            raise typer.Exit(2) from None


def describe_error(exc: BaseException) -> str:
    """One line saying which setting is wrong and why, with no value in it."""
    if isinstance(exc, pydantic.ValidationError):
        prefix = _env_prefix(exc.title)
        problems = []
        for error in exc.errors(include_input=False, include_url=False):
            field = ".".join(str(part) for part in error["loc"])
            where = f"{prefix}{field}".upper() if prefix is not None and field else field
            where = where or exc.title
            problems.append(f"{where}: {error['msg']}")
        return _one_line("; ".join(problems))
    if isinstance(exc, OSError) and exc.filename is not None:
        return _one_line(f"{exc.strerror or exc}: {exc.filename}")
    return _one_line(str(exc))


def _env_prefix(title: str) -> str | None:
    """The ``env_prefix`` of the settings class named ``title``, if it is one."""
    todo: list[type[BaseSettings]] = [BaseSettings]
    while todo:
        cls = todo.pop()
        if cls.__name__ == title and cls is not BaseSettings:
            prefix = cls.model_config.get("env_prefix")
            return prefix if isinstance(prefix, str) else None
        todo.extend(cls.__subclasses__())
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split())
