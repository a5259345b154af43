"""``driftloop checkpoints list|show|pin|unpin|gc|reindex|verify|tier``.

The store location comes from ``DRIFTLOOP_STORE_*`` (see
:class:`~services.checkpoints.config.StoreConfig`) or ``--store PATH``.
Every read command takes ``--json``; tables otherwise. Bad input (unknown
model or version, a metric no checkpoint has, a malformed time) prints one
clear line on stderr and exits with code 2.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import orjson
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from schemas.errors import DriftloopError
from schemas.manifest import TRIGGERS
from services.checkpoints.catalog import CheckpointRecord
from services.checkpoints.config import StoreConfig
from services.checkpoints.health import dangling_pins, quarantined_version, unloadable
from services.checkpoints.store import CheckpointStore, now_ms

app = typer.Typer(help="Inspect, pin and prune stored checkpoints.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)

StoreOpt = Annotated[
    Path | None, typer.Option("--store", help="Hot tier directory (else DRIFTLOOP_STORE_ROOT).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="Only this model.")]


def register(app_root: typer.Typer) -> None:
    """Add the ``checkpoints`` command group to the root ``driftloop`` app."""
    app_root.add_typer(app, name="checkpoints")


def _fail(message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", markup=True, highlight=False)
    raise typer.Exit(2)


@contextmanager
def _store(store: Path | None) -> Iterator[CheckpointStore]:
    try:
        config = StoreConfig() if store is None else StoreConfig(root=store)
        with CheckpointStore(config) as s:
            yield s
    except DriftloopError as exc:
        _fail(str(exc))


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def _check_model(s: CheckpointStore, model: str | None) -> None:
    if model is not None and model not in s.models():
        _fail(f"unknown model {model!r}; known: {', '.join(s.models()) or '(none)'}")


def parse_time(value: str | None) -> int | None:
    """Epoch ms from epoch ms, ISO 8601 (UTC unless it says), or ``30m``/``2h``/``7d`` ago."""
    if value is None:
        return None
    if value.isdigit():
        return int(value)
    rel = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", value)
    if rel:
        seconds = float(rel.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[rel.group(2)]
        return now_ms() - int(seconds * 1000)
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        _fail(f"cannot read time {value!r}: use epoch ms, ISO 8601, or 30m / 2h / 7d (ago)")
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return int(ts.timestamp() * 1000)


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _table(records: list[CheckpointRecord]) -> Table:
    table = Table(show_lines=False)
    for col in ("label", "created (UTC)", "tier", "size", "parent", "pins"):
        table.add_column(col)
    for r in records:
        table.add_row(
            r.label,
            _when(r.created_ts),
            r.tier,
            _size(r.size),
            r.parent_version or "-",
            ",".join(r.pins),
        )
    return table


def _progress(label: str) -> tuple[Callable[[int, int], None] | None, Progress | None]:
    if not out.is_terminal:
        return None, None
    bar = Progress(console=out, transient=True)
    task = bar.add_task(label, total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return update, bar


@app.command("list")
def list_(
    model: ModelOpt = None,
    trigger: Annotated[str | None, typer.Option(help=f"One of {', '.join(TRIGGERS)}.")] = None,
    since: Annotated[str | None, typer.Option(help="Created at or after (ms, ISO, 2h).")] = None,
    until: Annotated[str | None, typer.Option(help="Created before (ms, ISO, 2h).")] = None,
    best_by: Annotated[str | None, typer.Option(help="Rank by this metric, best first.")] = None,
    mode: Annotated[str, typer.Option(help="min or max: what 'best' means.")] = "min",
    limit: Annotated[int | None, typer.Option(min=1)] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Also report directories that are not committed.")
    ] = False,
    store: StoreOpt = None,
    json: JsonOpt = False,
) -> None:
    """List committed checkpoints (oldest first, or best first with --best-by).

    With --all, also directories that are not committed checkpoints and those
    GC quarantined because their manifest did not validate, with the reason.
    """
    if trigger is not None and trigger not in TRIGGERS:
        _fail(f"unknown trigger {trigger!r}; one of {', '.join(TRIGGERS)}")
    if mode not in ("min", "max"):
        _fail(f"--mode must be min or max, not {mode!r}")
    ranking: Literal["min", "max"] = "min" if mode == "min" else "max"
    with _store(store) as s:
        _check_model(s, model)
        records = s.query(
            model,
            trigger=trigger,
            since_ms=parse_time(since),
            until_ms=parse_time(until),
            best_by=best_by,
            mode=ranking,
            limit=limit,
            deep=True,
        )
        if best_by is not None and not records and not s.query(model, best_by=best_by, limit=1):
            _fail(f"no checkpoint{' of ' + model if model else ''} has metric {best_by!r}")
        invalid = [
            {"model": m, "tier": x.tier, "name": x.name, "reason": x.reason}
            for m in ([model] if model else s.models())
            for x in (s.invalid(m) if all_ else [])
        ]
        quarantined = [q.as_json() for q in (s.quarantined(model) if all_ else [])]
    if json:
        payload: dict[str, Any] = {"checkpoints": [r.as_json() for r in records]}
        if all_:
            payload["not_committed"] = invalid
            payload["quarantined"] = quarantined
        _print_json(payload)
        return
    out.print(_table(records))
    for x in invalid:
        out.print(
            f"[yellow]not committed[/yellow] {x['model']}/{x['name']} ({x['tier']}): {x['reason']}"
        )
    for q in quarantined:
        out.print(
            f"[red]quarantined[/red] {q['model']}/.quarantine/{q['name']} ({q['tier']}): "
            f"{q['reason']}",
            highlight=False,
        )


@app.command()
def show(model: str, version: str, store: StoreOpt = None, json: JsonOpt = False) -> None:
    """Show one checkpoint: manifest, files, tier, pins and lineage."""
    with _store(store) as s:
        _check_model(s, model)
        record = s.record(model, version)
        manifest = s.open(model, version).manifest
        lineage = [r.version for r in s.lineage(model, version)]
    if json:
        _print_json(
            {
                "record": record.as_json(),
                "manifest": manifest.model_dump(mode="json"),
                "lineage": lineage,
            }
        )
        return
    out.print(f"[bold]{manifest.label}[/bold]")
    facts = {
        "created (UTC)": _when(manifest.created_ts),
        "tier": record.tier,
        "location": record.location,
        "kind": manifest.kind,
        "parent": manifest.parent_version,
        "base": manifest.base_version,
        "examples seen": manifest.examples_seen,
        "metrics": manifest.metrics,
        "offsets": manifest.offsets,
        "code version": manifest.code_version,
        "pins": ", ".join(record.pins) or "-",
        "lineage": " <- ".join(lineage),
        "variants": ", ".join(manifest.variants) or "-",
    }
    for key, value in facts.items():
        out.print(f"  {key:14} {value}", highlight=False)
    files = Table("file", "size", "sha256", "stored in")
    for f in manifest.files:
        files.add_row(f.name, _size(f.size), f.sha256[:16], f.ref_version or "here")
    out.print(files)


@app.command()
def pin(model: str, version: str, label: str, store: StoreOpt = None) -> None:
    """Pin VERSION as milestone LABEL (e.g. prod-2026-11-27): retention always keeps it."""
    with _store(store) as s:
        _check_model(s, model)
        moved_from = s.pin(model, version, label)
    note = f" (moved from {moved_from})" if moved_from else ""
    out.print(f"pinned {model}/{version} as {label}{note}", highlight=False)


@app.command()
def unpin(
    model: str,
    label: Annotated[str | None, typer.Option(help="The pin label to remove.")] = None,
    version: Annotated[str | None, typer.Option(help="Remove every pin of this version.")] = None,
    store: StoreOpt = None,
) -> None:
    """Remove a pin by --label, or all pins of --version."""
    if (label is None) == (version is None):
        _fail("give exactly one of --label or --version")
    with _store(store) as s:
        _check_model(s, model)
        gone = s.unpin(model, label=label, version=version)
    if not gone:
        _fail(f"no such pin on {model}: {label or version}")
    out.print(f"unpinned {', '.join(gone)}", highlight=False)


@app.command()
def gc(
    model: ModelOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would go.")] = False,
    purge_quarantine: Annotated[
        bool,
        typer.Option(
            "--purge-quarantine", help="Only delete quarantined directories (nothing else)."
        ),
    ] = False,
    store: StoreOpt = None,
    json: JsonOpt = False,
) -> None:
    """Delete checkpoints no retention policy keeps, and leftovers of interrupted work.

    A version whose manifest does not validate is moved to quarantine, never
    deleted; --purge-quarantine deletes what is in quarantine.
    """
    verb = "would delete" if dry_run else "deleted"
    if purge_quarantine:
        with _store(store) as s:
            _check_model(s, model)
            purged = s.purge_quarantine(model, dry_run=dry_run)
        if json:
            _print_json({"dry_run": dry_run, "purged": [q.as_json() for q in purged]})
            return
        out.print(f"{verb} {len(purged)} quarantined directories", highlight=False)
        for q in purged:
            out.print(f"  {q.model}/.quarantine/{q.name} ({q.tier}): {q.reason}", highlight=False)
        return
    with _store(store) as s:
        _check_model(s, model)
        plans = s.gc(model, dry_run=dry_run)
    if json:
        _print_json({"dry_run": dry_run, "models": [p.as_json() for p in plans]})
        return
    for p in plans:
        table = Table(title=p.model)
        table.add_column("version")
        table.add_column("decision")
        for r in p.delete:
            table.add_row(r.version, f"[red]{verb}[/red]")
        for version, reason in sorted(p.kept.items()):
            table.add_row(version, f"kept: {reason}")
        for x in p.leftovers:
            table.add_row(f"{x.name} ({x.tier})", f"[red]{verb}[/red]: {x.reason}")
        moved = "would quarantine" if dry_run else "quarantined"
        for x in p.quarantine:
            table.add_row(f"{x.name} ({x.tier})", f"[yellow]{moved}[/yellow]: {x.reason}")
        out.print(table)


@app.command()
def reindex(store: StoreOpt = None, json: JsonOpt = False) -> None:
    """Rebuild the catalog from the manifests (the truth)."""
    with _store(store) as s:
        update, bar = _progress("reindexing")
        if bar is not None:
            with bar:
                count = s.reindex(update)
        else:
            count = s.reindex()
    if json:
        _print_json({"checkpoints": count})
    else:
        out.print(f"catalog rebuilt: {count} checkpoints")


@app.command()
def verify(model: ModelOpt = None, store: StoreOpt = None, json: JsonOpt = False) -> None:
    """Read every file of every committed checkpoint and check its hash; exit 1 on a problem.

    Directories that are not committed and quarantined ones are problems too, and
    so is every checkpoint that cannot be loaded because a checkpoint it depends
    on (a delta's parent or base, a file's holder) is missing, damaged or itself
    unloadable.
    """
    problems: list[dict[str, Any]] = []
    checked = 0
    with _store(store) as s:
        _check_model(s, model)
        for m in [model] if model else s.models():
            problems += [
                {"model": m, "version": x.name, "tier": x.tier, "problem": x.reason}
                for x in s.invalid(m)
            ]
            problems += [
                {
                    "model": m,
                    "version": f".quarantine/{q.name}",
                    "tier": q.tier,
                    "problem": f"quarantined: {q.reason}",
                }
                for q in s.quarantined(m)
            ]
            checked += len(s.query(m))
            # Every version that cannot be loaded, children of a broken chain included.
            listed = {p["version"] for p in problems if p["model"] == m}
            listed |= {quarantined_version(m, q.name) for q in s.quarantined(m)}
            problems += [
                {"model": m, "version": v, "problem": why}
                for v, why in unloadable(s, m).items()
                if v not in listed
            ]
            problems += [
                {"model": m, "version": f"pin:{label}", "problem": why}
                for label, why in dangling_pins(s, m).items()
            ]
    if json:
        _print_json({"checked": checked, "problems": problems})
    else:
        out.print(f"checked {checked} checkpoints, {len(problems)} problems")
        for p in problems:
            out.print(f"[red]{p['model']}/{p['version']}[/red]: {p['problem']}", highlight=False)
    if problems:
        raise typer.Exit(1)


@app.command()
def tier(model: ModelOpt = None, store: StoreOpt = None, json: JsonOpt = False) -> None:
    """Move checkpoints the tier policy selects to the cold tier now."""
    with _store(store) as s:
        _check_model(s, model)
        if s.cold is None or s.tiering is None:
            _fail(
                "no tiering configured "
                "(DRIFTLOOP_STORE_COLD_URL and _HOT_KEEP_NEWEST or _HOT_MAX_AGE_S)"
            )
        update, bar = _progress("moving to cold")
        if bar is not None:
            with bar:
                moved = s.move_tiers(model, update)
        else:
            moved = s.move_tiers(model)
    if json:
        _print_json({"moved": moved})
    else:
        out.print(f"moved {len(moved)} checkpoints to cold: {', '.join(moved) or '-'}")
