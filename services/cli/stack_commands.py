"""Commands that run the embedded stack: ``up`` and ``demo``."""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

import orjson
import pydantic
import typer
from rich.console import Console
from rich.table import Table

from schemas.errors import DriftloopError
from services.config import TopicsConfig
from services.stack import EmbeddedStack, StackInfo

#: How often ``up`` checks that its servers are still alive.
_WATCH_INTERVAL_S = 0.5


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT raise ``KeyboardInterrupt`` like Ctrl-C does.

    So ``kill <pid>`` (or a supervisor stopping us) unwinds ``with`` blocks
    and stops child servers cleanly instead of leaving it to PDEATHSIG. SIGINT
    is set too because a process started as a background job of a
    non-interactive shell inherits it ignored, and Python then installs no
    Ctrl-C handler: ``kill -INT`` would be lost on a command that says Ctrl-C
    stops it. Only from the main thread; elsewhere it does nothing.
    """

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _topics_config(partitions: int | None, topic_prefix: str | None) -> TopicsConfig:
    overrides: dict[str, Any] = {}
    if partitions is not None:
        overrides["partitions"] = partitions
    if topic_prefix is not None:
        overrides["prefix"] = topic_prefix
    try:
        return TopicsConfig(**overrides)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise typer.BadParameter(f"{where}: {first['msg']}") from None


def _print_table(console: Console, info: StackInfo) -> None:
    table = Table(title="driftloop stack", show_header=False)
    table.add_column("setting", style="bold")
    table.add_column("value")
    details = info.describe()
    table.add_row("Kafka bootstrap", details["bootstrap"])
    table.add_row("Redis URL", details["redis_url"])
    table.add_row("topic prefix", details["topic_prefix"] or "(none)")
    table.add_row("partitions", str(details["partitions"]))
    table.add_row("topics", ", ".join(details["topics"]))
    table.add_row("Redis key prefix", details["key_prefix"])
    pids = details["pids"]
    table.add_row("pids", ", ".join(f"{k}={v}" for k, v in pids.items()) or "(external)")
    console.print(table)
    console.print("Point other driftloop processes at this stack with:")
    for key, value in details["env"].items():
        console.print(f"export {key}={value}", markup=False, highlight=False, soft_wrap=True)


def up(
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object, not a table."),
    partitions: int | None = typer.Option(
        None,
        "--partitions",
        min=1,
        help="Partitions per topic (default DRIFTLOOP_TOPIC_PARTITIONS or 3).",
    ),
    topic_prefix: str | None = typer.Option(
        None, "--topic-prefix", help="Prefix of every topic name (default DRIFTLOOP_TOPIC_PREFIX)."
    ),
) -> None:
    """Run a broker and a Redis in the foreground until Ctrl-C or SIGTERM.

    Starts the embedded Tansu broker and a Redis on free loopback ports (or
    uses DRIFTLOOP_KAFKA_BOOTSTRAP / DRIFTLOOP_REDIS_URL when set), creates the
    topics, prints how to connect, and stops everything on exit.
    """
    topics = _topics_config(partitions, topic_prefix)
    err = Console(stderr=True)
    with sigterm_as_interrupt():
        stack = EmbeddedStack(topics=topics)
        try:
            info = stack.start()
        except DriftloopError as exc:
            err.print(f"[red]driftloop up failed:[/red] {exc}", markup=True, highlight=False)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            stack.stop()
            raise typer.Exit(130) from None
        try:
            if json_output:
                sys.stdout.write(orjson.dumps(info.describe()).decode() + "\n")
                sys.stdout.flush()
            else:
                _print_table(Console(), info)
            err.print("stack running; Ctrl-C or SIGTERM stops it", highlight=False)
            while not (exited := stack.exited()):
                time.sleep(_WATCH_INTERVAL_S)
            name, code = next(iter(exited.items()))
            err.print(
                f"[red]the {name} server exited (code {code}); stopping[/red]\n"
                + stack.output_tail(name),
                highlight=False,
            )
            raise typer.Exit(1)
        except KeyboardInterrupt:
            err.print("stopping", highlight=False)
        finally:
            stack.stop()


def register(app: typer.Typer) -> None:
    """Add the stack commands to the root ``driftloop`` app."""
    app.command("up")(up)
