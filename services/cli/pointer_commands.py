"""``driftloop promote|rollback|canary|shadow|status`` and ``driftloop pointer restore``.

Settings: ``DRIFTLOOP_REDIS_*`` (the pointer), ``DRIFTLOOP_KAFKA_*`` and
``DRIFTLOOP_TOPIC_*`` (the ``version-events`` log), ``DRIFTLOOP_STORE_*`` or
``--store`` (the checkpoint store every named version is checked against,
opened read-only; its ``rollback_depth`` is the history the pointer keeps).

Every change takes ``--reason`` and records ``--actor`` (default: the OS
user), is one compare-and-set on the pointer's epoch (``--expect-epoch``
refuses it if the pointer moved since), and refuses a version that is not
in the store, does not verify, or is quarantined. After the change the
command relays the outbox to ``version-events`` itself; if the broker is
unreachable the change stands and its event waits in the Redis outbox for
the next relay (servers, workers, or the next change command). Refusals and
bad settings are one line on stderr, exit 2.
"""

from __future__ import annotations

import getpass
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import orjson
import redis
import typer
from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from rich.console import Console
from rich.table import Table

from schemas.errors import BrokerError, DriftloopError
from schemas.events import VersionEvent
from services.checkpoints.config import StoreConfig
from services.checkpoints.opener import open_store
from services.cli.live_metrics_view import print_live_metrics
from services.config import KafkaConfig, RedisConfig, TopicsConfig
from services.kafka import ensure_topics
from services.pointer.base import PointerError, PointerState, outbox_key, servers_key
from services.pointer.factory import pointer_for_changes, redis_client
from services.pointer.log import KafkaVersionLog
from services.pointer.redis import RedisPointer
from services.pointer.relay import OutboxRelay, RelayResult
from services.pointer.restore import restore_pointers
from services.pointer.validation import StoreVersionCheck
from services.validation.live_store import read_live_metrics

out = Console()
err = Console(stderr=True)
pointer_app = typer.Typer(help="Rebuild version pointers from their log.", no_args_is_help=True)

#: A server report older than this is shown as stale.
STALE_AFTER_MS = 30_000
#: How long a change command waits for another relay to finish before it relays.
RELAY_WAIT_S = 30.0

ReasonOpt = Annotated[str, typer.Option("--reason", help="Why, in words (recorded).")]
ActorOpt = Annotated[
    str | None, typer.Option("--actor", help="Who makes the change; default the OS user.")
]
ExpectOpt = Annotated[
    int | None,
    typer.Option(
        "--expect-epoch", help="Refuse unless the pointer is still at this epoch (0: no pointer)."
    ),
]
StoreOpt = Annotated[
    Path | None, typer.Option("--store", help="Hot tier directory (else DRIFTLOOP_STORE_ROOT).")
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", help="Model configuration (TOML); default DRIFTLOOP_WORKER_MODELS, optional."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def register(app_root: typer.Typer) -> None:
    """Add the pointer commands and the ``pointer`` group to the root ``driftloop`` app."""
    for name, command in (
        ("promote", promote),
        ("rollback", rollback),
        ("canary", canary),
        ("shadow", shadow),
        ("status", status),
    ):
        app_root.command(name)(command)
    app_root.add_typer(pointer_app, name="pointer")


class _ModelsSetting(BaseSettings):
    """``DRIFTLOOP_WORKER_MODELS``, the model configuration the store is opened with."""

    model_config = SettingsConfigDict(env_prefix="DRIFTLOOP_WORKER_", frozen=True, extra="ignore")

    models: Path | None = None

    @field_validator("models", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value


def default_actor() -> str:
    try:
        return getpass.getuser() or "unknown"
    except (OSError, KeyError):  # no user name in the environment or passwd database
        return "unknown"


@contextmanager
def _changing(store: Path | None, config: Path | None) -> Iterator[RedisPointer]:
    """The pointer a change command uses, checking versions against the store read-only."""
    store_config = StoreConfig() if store is None else StoreConfig(root=store)
    path = config if config is not None else _ModelsSetting().models
    learning = None
    if path is not None:
        from services.learning.config import load_config

        learning = load_config(path)
    _ensure_log()
    with open_store(store_config, learning, read_only=True) as s:
        pointer = pointer_for_changes(store_config, StoreVersionCheck(s.reader))
        try:
            yield pointer
        finally:
            pointer.client.close()


def _ensure_log() -> None:
    """Create ``version-events`` (unlimited retention) if this deployment has none yet."""
    topics = TopicsConfig()
    ensure_topics(KafkaConfig(), [topics.version_events], topics)


def _relay(client: redis.Redis[str], *, wait_s: float = RELAY_WAIT_S) -> RelayResult | None:
    """Relay the outbox; on failure say so (the change stands, its event waits) and return None."""
    rc = RedisConfig()
    try:
        relay = OutboxRelay(
            client,
            key_prefix=rc.key_prefix,
            kafka=KafkaConfig(),
            topic=TopicsConfig().version_events,
        )
        return relay.relay_pending(wait_s=wait_s)
    except (BrokerError, PointerError) as exc:
        err.print(
            f"warning: not yet in version-events ({exc}); the event waits in the Redis outbox "
            "and the next relay (model servers, workers, the next change) copies it",
            highlight=False,
            soft_wrap=True,
        )
        return None


def _apply(
    store: Path | None,
    config: Path | None,
    json: bool,
    make: Callable[[RedisPointer], VersionEvent],
) -> None:
    with _changing(store, config) as pointer:
        event = make(pointer)
        relayed = _relay(pointer.client)
    if json:
        _print_json(
            {
                "event": orjson.loads(event.model_dump_json()),
                "relayed": relayed is not None,
                "pending": relayed.left if relayed is not None else None,
            }
        )
        return
    slots = f"live={event.live or '-'}"
    if event.canary:
        slots += f" canary={event.canary} ({event.canary_percent:g}%)"
    if event.shadow:
        slots += f" shadow={event.shadow}"
    out.print(f"{event.model}: {event.action} at epoch {event.epoch}: {slots}", highlight=False)


def promote(
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str, typer.Argument(help="Version to make live.")],
    reason: ReasonOpt = "",
    actor: ActorOpt = None,
    expect_epoch: ExpectOpt = None,
    store: StoreOpt = None,
    config: ConfigOpt = None,
    json: JsonOpt = False,
) -> None:
    """Make VERSION live; the live version goes to the front of the rollback history."""
    _apply(
        store,
        config,
        json,
        lambda p: p.promote(
            model,
            version,
            actor=actor or default_actor(),
            reason=reason,
            expected_epoch=expect_epoch,
        ),
    )


def rollback(
    model: Annotated[str, typer.Argument(help="Model name.")],
    to: Annotated[
        str | None, typer.Option("--to", help="A version of the rollback history.")
    ] = None,
    reason: ReasonOpt = "",
    actor: ActorOpt = None,
    expect_epoch: ExpectOpt = None,
    store: StoreOpt = None,
    config: ConfigOpt = None,
    json: JsonOpt = False,
) -> None:
    """Make the previous live version (or --to VERSION of the history) live again."""
    _apply(
        store,
        config,
        json,
        lambda p: p.rollback(
            model, to=to, actor=actor or default_actor(), reason=reason, expected_epoch=expect_epoch
        ),
    )


def canary(
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str | None, typer.Argument(help="Version to canary.")] = None,
    percent: Annotated[
        float | None, typer.Option("--percent", help="Share of traffic, 0 < P <= 100.")
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the canary.")] = False,
    reason: ReasonOpt = "",
    actor: ActorOpt = None,
    expect_epoch: ExpectOpt = None,
    store: StoreOpt = None,
    config: ConfigOpt = None,
    json: JsonOpt = False,
) -> None:
    """Route --percent of the traffic to VERSION, or --clear the canary."""
    if clear == (version is not None):
        raise PointerError("give either VERSION --percent P or --clear", model=model)
    if version is not None and percent is None:
        raise PointerError("a canary needs --percent P", model=model, version=version)
    if clear and percent is not None:
        raise PointerError("--clear takes no --percent", model=model)
    _apply(
        store,
        config,
        json,
        lambda p: p.set_canary(
            model,
            version,
            percent or 0.0,
            actor=actor or default_actor(),
            reason=reason,
            expected_epoch=expect_epoch,
        ),
    )


def shadow(
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str | None, typer.Argument(help="Version to shadow.")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the shadow.")] = False,
    reason: ReasonOpt = "",
    actor: ActorOpt = None,
    expect_epoch: ExpectOpt = None,
    store: StoreOpt = None,
    config: ConfigOpt = None,
    json: JsonOpt = False,
) -> None:
    """Send a copy of the traffic to VERSION (its predictions logged, not returned), or --clear."""
    if clear == (version is not None):
        raise PointerError("give either VERSION or --clear", model=model)
    _apply(
        store,
        config,
        json,
        lambda p: p.set_shadow(
            model,
            version,
            actor=actor or default_actor(),
            reason=reason,
            expected_epoch=expect_epoch,
        ),
    )


def status(
    model: Annotated[str | None, typer.Argument(help="Model name; default every model.")] = None,
    recent: Annotated[int, typer.Option("--recent", help="Changes shown per model.", min=0)] = 5,
    json: JsonOpt = False,
) -> None:
    """Each pointer, its epoch, recent changes (who and why), the epoch each server applied,
    and each version's live metrics (window and total)."""
    rc = RedisConfig()
    client = redis_client(rc)
    try:
        pointer = RedisPointer(
            client, key_prefix=rc.key_prefix, history_depth=StoreConfig().rollback_depth, log=None
        )
        models = [model] if model is not None else pointer.models()
        log_error: str | None = None
        changes: dict[str, list[VersionEvent]] = {m: [] for m in models}
        if recent and models:
            try:
                log = KafkaVersionLog(KafkaConfig(), TopicsConfig().version_events)
                for e in log.events():
                    if e.model in changes:
                        changes[e.model].append(e)
            except DriftloopError as exc:
                log_error = str(exc)
        pending = _pending(client, rc.key_prefix)
        now = time.time_ns() // 1_000_000
        report = [
            _model_report(
                m,
                pointer.get(m),
                _recent(changes.get(m, []), pending.get(m, []), recent),
                _servers(client, rc.key_prefix, m, now),
                read_live_metrics(client, rc.key_prefix, m),
            )
            for m in models
        ]
    except redis.RedisError as exc:
        raise PointerError(f"cannot read Redis: {exc}") from exc
    finally:
        client.close()
    if json:
        _print_json({"models": report, "log_error": log_error})
        return
    if not report:
        out.print("no pointers")
    for r in report:
        _print_model(r)
    if log_error:
        err.print(f"warning: recent changes unavailable: {log_error}", highlight=False)


def _pending(client: redis.Redis[str], prefix: str) -> dict[str, list[VersionEvent]]:
    from schemas.codec import decode

    found: dict[str, list[VersionEvent]] = {}
    for _id, fields in client.xrange(outbox_key(prefix)):
        try:
            e = decode(VersionEvent, fields.get("event", ""))
        except DriftloopError:
            continue
        found.setdefault(e.model, []).append(e)
    return found


def _recent(
    logged: list[VersionEvent], pending: list[VersionEvent], n: int
) -> list[dict[str, Any]]:
    by_id: dict[str, tuple[VersionEvent, bool]] = {e.event_id: (e, True) for e in logged}
    for e in pending:
        by_id.setdefault(e.event_id, (e, False))
    newest = sorted(by_id.values(), key=lambda item: item[0].epoch, reverse=True)[:n] if n else []
    return [
        {
            "epoch": e.epoch,
            "action": e.action,
            "ts": e.ts,
            "actor": e.actor,
            "reason": e.reason,
            "from_live": e.from_live,
            "live": e.live,
            "canary": e.canary,
            "canary_percent": e.canary_percent,
            "shadow": e.shadow,
            "in_log": in_log,
        }
        for e, in_log in newest
    ]


def _servers(client: redis.Redis[str], prefix: str, model: str, now: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for server, raw in sorted(client.hgetall(servers_key(prefix, model)).items()):
        try:
            report = orjson.loads(raw)
            epoch, ts = int(report["epoch"]), int(report["ts"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            rows.append({"server": server, "epoch": None, "ts": None, "stale": True})
            continue
        rows.append(
            {
                "server": server,
                "epoch": epoch,
                "ts": ts,
                "age_ms": now - ts,
                "stale": now - ts > STALE_AFTER_MS,
            }
        )
    return rows


def _model_report(
    model: str,
    state: PointerState | None,
    recent: list[dict[str, Any]],
    servers: list[dict[str, Any]],
    live_metrics: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    pointer = None
    if state is not None:
        pointer = {
            "epoch": state.epoch,
            "live": state.live,
            "previous": state.previous,
            "canary": state.canary,
            "canary_percent": state.canary_percent,
            "shadow": state.shadow,
            "history": list(state.history),
        }
    return {
        "model": model,
        "pointer": pointer,
        "recent": recent,
        "servers": servers,
        "live_metrics": live_metrics,
    }


def _print_model(r: dict[str, Any]) -> None:
    p = r["pointer"]
    if p is None:
        out.print(
            f"{r['model']}: no pointer in Redis (run `driftloop pointer restore` if it had one)",
            highlight=False,
        )
    else:
        line = f"{r['model']}: epoch {p['epoch']} live={p['live'] or '-'}"
        if p["canary"]:
            line += f" canary={p['canary']} ({p['canary_percent']:g}%)"
        if p["shadow"]:
            line += f" shadow={p['shadow']}"
        out.print(line, highlight=False)
        out.print(f"  rollback history: {', '.join(p['history']) or '-'}", highlight=False)
    if r["recent"]:
        table = Table(title=f"{r['model']}: recent changes")
        for col in ("epoch", "action", "when (UTC)", "actor", "reason", "to"):
            table.add_column(col)
        for c in r["recent"]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(c["ts"] / 1000))
            mark = "" if c["in_log"] else " (not yet in version-events)"
            table.add_row(
                str(c["epoch"]),
                c["action"] + mark,
                when,
                c["actor"],
                c["reason"],
                c["live"] or "-",
            )
        out.print(table)
    for s in r["servers"]:
        state = "stale" if s["stale"] else "current"
        epoch = s["epoch"] if s["epoch"] is not None else "?"
        out.print(f"  server {s['server']}: epoch {epoch} ({state})", highlight=False)
    print_live_metrics(out, r["live_metrics"])


@pointer_app.command("restore")
def restore(json: JsonOpt = False) -> None:
    """Rebuild every pointer from version-events where Redis has none or an older epoch."""
    rc = RedisConfig()
    pointer = RedisPointer(
        redis_client(rc),
        key_prefix=rc.key_prefix,
        history_depth=StoreConfig().rollback_depth,
        log=None,
    )
    try:
        _relay(pointer.client)  # what the outbox holds is in Redis already; log it first
        log = KafkaVersionLog(KafkaConfig(), TopicsConfig().version_events)
        done = restore_pointers(pointer, log)
    finally:
        pointer.client.close()
    if json:
        _print_json({"models": [r.as_json() for r in done]})
        return
    if not done:
        out.print("version-events holds no pointer change: nothing to restore")
    for r in done:
        was = f"Redis had epoch {r.redis_epoch}" if r.redis_epoch is not None else "Redis had none"
        out.print(f"{r.model}: {r.outcome} epoch {r.logged_epoch} ({was})", highlight=False)


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")
