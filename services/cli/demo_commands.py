"""``driftloop demo``: the whole loop on the embedded stack, shown live."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from schemas.errors import DriftloopError
from services.cli.stack_commands import sigterm_as_interrupt


def demo(
    requests: Annotated[
        int,
        typer.Option(min=200, help="Predict requests to send (the first ones are the bootstrap)."),
    ] = 9000,
    drift_at: Annotated[
        int | None,
        typer.Option(help="Request index where the concept drifts (default: a third)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic traffic.")] = 7,
    model: Annotated[
        str, typer.Option(help="Shipped example model config: river_logreg or torch_fm.")
    ] = "river_logreg",
    checkpoint_every: Annotated[
        int, typer.Option(min=10, help="Feedback-count checkpoint interval.")
    ] = 1000,
    store: Annotated[
        Path | None, typer.Option(help="Keep checkpoints here (default: a temporary directory).")
    ] = None,
    policy: Annotated[
        str,
        typer.Option(
            help="The gateway's policy: canary (each candidate canaried at 25% of the traffic"
            " before its promotion) or auto (promoted at once)."
        ),
    ] = "canary",
    json: Annotated[bool, typer.Option("--json", help="Print only the summary, as JSON.")] = False,
) -> None:
    """Run the whole loop on an embedded broker and Redis: a worker (attribution
    joiner + online trainer), the validation gateway and guard, and two
    `driftloop serve` model servers. Synthetic traffic from a drifting stream is
    sent as HTTP predict calls to the servers (after a bootstrap whose inference
    logs go straight to Kafka), its delayed, out-of-order, duplicated and late
    feedback through POST /v1/feedback and straight to the feedback topic. The
    gateway promotes the checkpoints that score at least as well as live on
    held-out requests; midway a poisoned checkpoint is offered (refused), then
    forced live as an operator would, and the guard rolls it back. Joins,
    prequential metrics, drift detections, checkpoints, verdicts with their
    figures, pointer changes and each server's live version and applied epoch
    are shown as they happen. Every process it starts is stopped when it ends."""
    console = Console(stderr=json)
    # Here, not at the top: the demo imports river, and every command pays
    # for what `services.cli` imports (tests/unit/test_cli_imports.py).
    from services.demo.runner import DemoOptions, run_demo
    from services.demo.traffic import TrafficConfig

    traffic = TrafficConfig(
        requests=requests, drift_at=drift_at if drift_at is not None else requests // 3, seed=seed
    )
    if policy not in ("canary", "auto"):
        console.print(f"[red]--policy must be canary or auto, not {policy!r}[/red]")
        raise typer.Exit(2)
    options = DemoOptions(
        model_config=model,
        traffic=traffic,
        store=store,
        checkpoint_every=checkpoint_every,
        policy="canary" if policy == "canary" else "auto",
    )
    try:
        with sigterm_as_interrupt():  # Ctrl-C, kill -INT and kill stop it cleanly
            summary = run_demo(options, console, quiet=json)
    except DriftloopError as exc:
        console.print(f"[red]demo failed:[/red] {exc}")
        raise typer.Exit(1) from None
    if json:
        typer.echo(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
        return
    _print_summary(console, summary)


def _print_summary(console: Console, summary: dict[str, Any]) -> None:
    table = Table(title="demo summary", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("model", str(summary["model"]))
    table.add_row("seconds", str(summary["seconds"]))
    for step in summary["timeline"]:
        table.add_row(f"  at {step['at_s']:6.1f} s", step["phase"])
    for key, value in summary["traffic"].items():
        table.add_row(f"traffic: {key.replace('_', ' ')}", f"{value:,}")
    table.add_row("joined examples", f"{summary['joined_examples']:,}")
    table.add_row("default-label examples", f"{summary['default_label_examples']:,}")
    table.add_row("mean feedback delay", f"{summary['mean_join_latency_ms']} ms")
    letters = summary["dead_letters"]
    table.add_row("bootstrap requests", f"{summary['bootstrap_requests']:,} (logs to the topic)")
    table.add_row("dead letters", ", ".join(f"{k}={v}" for k, v in letters.items()) or "none")
    table.add_row("checkpoints", str(len(summary["checkpoints"])))
    table.add_row("drift checkpoints", ", ".join(summary["drift_checkpoints"]) or "none")
    for server in summary["servers"]:
        served = ", ".join(f"{v}: {n:,}" for v, n in server["versions_served"].items())
        table.add_row(
            f"server {server['server']}",
            f"{server['requests']:,} requests in {server['predict_calls']:,} calls,"
            f" {server['feedback_posted']:,} feedback accepted;"
            f" final live {server['live']} at epoch {server['applied_epoch']}",
        )
        table.add_row(f"  versions served by {server['server']}", served or "none")
        routes = ", ".join(f"{r}: {n:,}" for r, n in server.get("routes_served", {}).items())
        table.add_row(f"  routes of {server['server']}", routes or "none")
    for c in summary.get("canaries", []):
        if c["action"] == "canary":
            what = f"{c['canary']} at {c['canary_percent']:g}% of the traffic: {c['reason']}"
        else:
            what = f"cleared: {c['reason']}"
        table.add_row(f"canary (epoch {c['epoch']}, {c['actor']})", what)
    for p in summary["promotions"]:
        table.add_row(f"promotion (epoch {p['epoch']}, {p['actor']})", f"{p['to']}: {p['reason']}")
    for r in summary["rollbacks"]:
        table.add_row(
            f"rollback (epoch {r['epoch']}, {r['actor']})",
            f"{r['from']} -> {r['to']}: {r['reason']}",
        )
    decisions = Counter(f"{v['judge']} {v['decision']}" for v in summary["verdicts"])
    table.add_row("verdicts", ", ".join(f"{k}: {n}" for k, n in sorted(decisions.items())))
    poison = summary["poison"]
    if poison is None:
        table.add_row(
            "poisoned checkpoint",
            "not offered: the traffic ended before the live version had been kept by the"
            " guard with a good score (raise --requests)",
        )
    else:
        table.add_row(
            "poisoned checkpoint",
            f"{poison['version']}: gateway {poison.get('verdict', 'no verdict yet')};"
            f" forced live at epoch {poison.get('forced_epoch', '-')};"
            f" rolled back by the guard at epoch {poison.get('rolled_back_epoch', '-')}"
            f" after {poison.get('guard_n', '-')} held-out examples",
        )
    pointer = summary["pointer"]
    if pointer is not None:
        converged = "both servers" if summary["epochs_converged"] else "NOT every server"
        table.add_row(
            "pointer", f"live {pointer['live']} at epoch {pointer['epoch']} ({converged} there)"
        )
    final = summary["final"]
    if final is not None:
        metrics = " ".join(f"{k}={v:.4f}" for k, v in sorted(final["metrics"].items()))
        seen = f"{final['examples_seen']:,} examples"
        table.add_row("final checkpoint", f"{final['version']} ({seen})")
        table.add_row("final metrics", metrics)
    if summary.get("store"):
        table.add_row("store", str(summary["store"]))
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add ``demo`` to the root ``driftloop`` app."""
    app.command("demo")(demo)
