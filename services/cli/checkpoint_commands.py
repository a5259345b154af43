"""``driftloop checkpoints list|show|pin|unpin|gc|reindex|verify|tier|sign``.

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
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn

import orjson
import typer
from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from schemas.errors import CheckpointNotFoundError, CheckpointSignatureError, DriftloopError
from schemas.manifest import TRIGGERS
from services.checkpoints.catalog import CheckpointRecord
from services.checkpoints.config import StoreConfig
from services.checkpoints.opener import open_store
from services.checkpoints.retention import best_mode
from services.checkpoints.scan import quarantined_version
from services.checkpoints.store import CheckpointStore, now_ms
from services.pointer.factory import references_from_env

if TYPE_CHECKING:
    from services.learning.config import LearningConfig

app = typer.Typer(help="Inspect, pin and prune stored checkpoints.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)

StoreOpt = Annotated[
    Path | None, typer.Option("--store", help="Hot tier directory (else DRIFTLOOP_STORE_ROOT).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="Only this model.")]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="The model configuration (TOML) the worker runs with; default "
        "DRIFTLOOP_WORKER_MODELS. Required: each model's retention comes from it.",
    ),
]


def register(app_root: typer.Typer) -> None:
    """Add the ``checkpoints`` command group to the root ``driftloop`` app."""
    app_root.add_typer(app, name="checkpoints")


def _fail(message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(2)


class _ModelsSetting(BaseSettings):
    """``DRIFTLOOP_WORKER_MODELS``: the model configuration the worker reads by default.

    Read here with the same name and prefix as :class:`streams.worker.WorkerConfig`
    (without importing the streaming layer), so ``gc`` and ``tier`` default to the
    configuration the worker prunes with.
    """

    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_WORKER_", frozen=True, extra="ignore")

    models: Path | None = None

    @field_validator("models", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value


@contextmanager
def _store(
    store: Path | None,
    *,
    read_only: bool,
    learning: LearningConfig | None = None,
    pointer: bool = False,
) -> Iterator[CheckpointStore]:
    """The store every command works on, opened by :func:`open_store`.

    A command never creates a store: one that does not exist is an error
    for reading and writing commands alike. With ``pointer`` (``gc``,
    ``tier``) the version pointer in Redis is the store's reference source
    when ``DRIFTLOOP_REDIS_URL`` is set: what it names is never deleted or
    moved, and a pointer that cannot be read aborts the run before anything is.
    """
    try:
        config = StoreConfig() if store is None else StoreConfig(root=store)
        if not read_only and not config.root.exists():
            raise CheckpointNotFoundError("no checkpoint store here", path=str(config.root))
        references = references_from_env(config) if pointer else None
        try:
            with open_store(config, learning, read_only=read_only, references=references) as s:
                yield s
        finally:
            if references is not None:
                references.client.close()
    except DriftloopError as exc:
        _fail(str(exc))


@dataclass(frozen=True)
class _Models:
    """The model configuration a pruning command applies, and where it came from."""

    path: Path
    learning: LearningConfig

    def names(self) -> list[str]:
        return [m.name for m in self.learning.models]


def _models(config: Path | None, verb: str) -> _Models:
    """The model configuration for ``gc`` / ``tier``; without one, refuse (exit 2).

    Each model's retention lives in its configuration, so a command without
    it would apply the store's defaults and delete or move what the worker keeps.
    """
    path = config if config is not None else _ModelsSetting().models
    if path is None:
        _fail(
            f"checkpoints {verb} needs the model configuration the worker runs with "
            "(--config models.toml or DRIFTLOOP_WORKER_MODELS): each model's retention "
            "comes from it; nothing was changed"
        )
    from services.learning.config import load_config

    try:
        return _Models(path, load_config(path))
    except DriftloopError as exc:
        _fail(str(exc))


def _configured(s: CheckpointStore, models: _Models, model: str | None) -> list[str]:
    """The models ``gc`` / ``tier`` act on: those of the configuration found in the store."""
    if model is not None:
        _check_model(s, model)
        if model not in models.names():
            _fail(
                f"model {model!r} is not in {models.path} (its retention is there); "
                f"it declares: {', '.join(models.names())}"
            )
        return [model]
    present = set(s.models())
    return [name for name in models.names() if name in present]


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def _check_model(s: CheckpointStore, model: str | None) -> None:
    if model is not None and model not in s.models():
        _fail(f"unknown model {model!r}; known: {', '.join(s.models()) or '(none)'}")


#: The times ``--since`` / ``--until`` accept: those a datetime can hold (years 1-9999).
_MIN_MS = int(datetime(1, 1, 1, tzinfo=UTC).timestamp() * 1000)
_MAX_MS = int(datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC).timestamp() * 1000)


def parse_time(value: str | None) -> int | None:
    """Epoch ms from epoch ms, ISO 8601 (UTC unless it says), or ``30m``/``2h``/``7d`` ago.

    A time outside years 1-9999 is refused (exit 2), not passed on to overflow later.
    """
    if value is None:
        return None
    ms: float
    if value.isascii() and value.isdigit():
        ms = int(value)
    elif rel := re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", value, flags=re.ASCII):
        seconds = float(rel.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[rel.group(2)]
        ms = now_ms() - seconds * 1000
    else:
        try:
            ts = datetime.fromisoformat(value)
        except ValueError:
            _fail(f"cannot read time {value!r}: use epoch ms, ISO 8601, or 30m / 2h / 7d (ago)")
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=UTC)
        ms = ts.timestamp() * 1000
    if not _MIN_MS <= ms <= _MAX_MS:  # also false for inf and nan
        _fail(f"time {value!r} is out of range (years 1 to 9999)")
    return int(ms)


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
    mode: Annotated[
        str | None,
        typer.Option(
            help="min or max: what 'best' means. Default: from the metric "
            "(max for accuracy, min for losses and errors)."
        ),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, max=2**63 - 1)] = None,
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
    if mode is None:
        ranking: Literal["min", "max"] = best_mode(best_by) if best_by is not None else "min"
    elif mode in ("min", "max"):
        ranking = "min" if mode == "min" else "max"
    else:
        _fail(f"--mode must be min or max, not {mode!r}")
    with _store(store, read_only=True) as s:
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
    with _store(store, read_only=True) as s:
        _check_model(s, model)
        record = s.record(model, version)
        manifest = s.manifest(model, version)  # display only: no state is read
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
        "signed by": manifest.signature.key_id if manifest.signature else "unsigned",
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
    with _store(store, read_only=False) as s:
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
    with _store(store, read_only=False) as s:
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
    config: ConfigOpt = None,
    store: StoreOpt = None,
    json: JsonOpt = False,
) -> None:
    """Delete checkpoints no retention policy keeps, and leftovers of interrupted work.

    Each model keeps what its retention table in the model configuration says
    (--config, as the worker runs with): GC refuses to run without one, and
    leaves alone models the configuration does not declare. A version whose
    manifest does not validate is moved to quarantine, never deleted;
    --purge-quarantine deletes what is in quarantine (no configuration needed).
    A dry run opens the store read-only.
    """
    verb = "would delete" if dry_run else "deleted"
    if purge_quarantine:
        with _store(store, read_only=dry_run) as s:
            _check_model(s, model)
            purged = s.purge_quarantine(model, dry_run=dry_run)
        if json:
            _print_json({"dry_run": dry_run, "purged": [q.as_json() for q in purged]})
            return
        out.print(f"{verb} {len(purged)} quarantined directories", highlight=False)
        for q in purged:
            out.print(f"  {q.model}/.quarantine/{q.name} ({q.tier}): {q.reason}", highlight=False)
        return
    models = _models(config, "gc")
    with _store(store, read_only=dry_run, learning=models.learning, pointer=True) as s:
        chosen = _configured(s, models, model)
        skipped = [m for m in s.models() if m not in chosen] if model is None else []
        plans = [p for m in chosen for p in s.gc(m, dry_run=dry_run)]
    if json:
        _print_json(
            {
                "dry_run": dry_run,
                "config": str(models.path),
                "models": [p.as_json() for p in plans],
                "skipped": skipped,
            }
        )
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
    for m in skipped:
        out.print(f"{m}: left alone (not in {models.path})", highlight=False)


@app.command()
def reindex(store: StoreOpt = None, json: JsonOpt = False) -> None:
    """Rebuild the catalog from the manifests (the truth)."""
    with _store(store, read_only=False) as s:
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

    Each manifest's signature is checked first: an unsigned checkpoint, one
    signed by an untrusted key or wrongly signed is a problem (its files are
    not read). Directories that are not committed and quarantined ones are
    problems too, and so is every checkpoint that cannot be loaded because a
    checkpoint it depends on (a delta's parent or base, a file's holder) is
    missing, damaged or itself unloadable.
    """
    problems: list[dict[str, Any]] = []
    checked = 0
    with _store(store, read_only=True) as s:
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
            records = s.query(m)
            checked += len(records)
            for r in records:  # signatures first: they say why, and no file is read
                try:
                    s.open(m, r.version)
                except CheckpointSignatureError as exc:
                    problems.append(
                        {
                            "model": m,
                            "version": r.version,
                            "problem": str(exc),
                            "reason": exc.reason,
                        }
                    )
            # Every version that cannot be loaded, children of a broken chain included.
            # (health loads state, so torch: imported here, not for every command.)
            from services.checkpoints.health import dangling_pins, unloadable

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
def tier(
    model: ModelOpt = None, config: ConfigOpt = None, store: StoreOpt = None, json: JsonOpt = False
) -> None:
    """Move checkpoints the tier policy selects to the cold tier now.

    Like gc, only the models of the model configuration (--config, as the
    worker runs with) are moved; without one nothing is.
    """
    models = _models(config, "tier")
    with _store(store, read_only=False, learning=models.learning, pointer=True) as s:
        chosen = _configured(s, models, model)
        if s.cold is None or s.tiering is None:
            _fail(
                "no tiering configured "
                "(DRIFTLOOP_STORE_COLD_URL and _HOT_KEEP_NEWEST or _HOT_MAX_AGE_S)"
            )
        update, bar = _progress("moving to cold")
        moved: list[str] = []
        with bar if bar is not None else nullcontext():
            for m in chosen:
                moved += s.move_tiers(m, update)
    if json:
        _print_json({"moved": moved})
    else:
        out.print(f"moved {len(moved)} checkpoints to cold: {', '.join(moved) or '-'}")


@app.command()
def sign(
    adopt: Annotated[
        bool,
        typer.Option("--adopt", help="Sign every unsigned checkpoint with this process's key."),
    ] = False,
    model: ModelOpt = None,
    store: StoreOpt = None,
    json: JsonOpt = False,
) -> None:
    """Sign the checkpoints of a store written before signing existed (once, on purpose).

    Loaders refuse unsigned checkpoints. Signing them vouches for them as they
    are now, so it takes --adopt: run it once on a store you trust, with the
    writer's key (DRIFTLOOP_STORE_SIGNING_KEY or _SIGNING_KEY_FILE). A version
    whose files do not match its manifest is not signed; exit 1 if any is left.
    """
    with _store(store, read_only=not adopt) as s:
        _check_model(s, model)
        if not adopt:
            waiting = s.unsigned(model)
            _fail(
                f"{len(waiting)} unsigned checkpoints; signing vouches for them as they are now, "
                "so it is an explicit act: run `driftloop checkpoints sign --adopt` on a store "
                "you trust"
            )
        update, bar = _progress("signing")
        if bar is not None:
            with bar:
                signed = s.adopt(model, update)
        else:
            signed = s.adopt(model)
        left = [v for _, v in s.unsigned(model)]
        key = s.require_signer().key_id
    if json:
        _print_json({"key_id": key, "signed": signed, "unsigned": left})
    else:
        out.print(
            f"signed {len(signed)} checkpoints with key {key}: {', '.join(signed) or '-'}",
            highlight=False,
        )
        for version in left:
            out.print(
                f"[red]{version}[/red]: not signed (its files do not match its manifest; "
                "see `driftloop checkpoints verify`)",
                highlight=False,
            )
    if left:
        raise typer.Exit(1)
