"""The live-metrics part of ``driftloop status``: one line per version and route.

``status`` reads the figures :class:`services.validation.live_store.LiveMetricsStore`
writes to ``{prefix}{model}:metrics`` with
:func:`services.validation.live_store.read_live_metrics` (no model code is
loaded) and prints them with :func:`print_live_metrics`::

      live metrics (window / total):
        fraud-000012 live: n=1234 unscored=1 defaults=2 accuracy=0.9123/0.8821 ...
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console

#: Versions shown in text, most recently updated first (``--json`` has all).
MAX_ROWS = 10


def live_metric_lines(versions: dict[str, dict[str, Any]]) -> list[str]:
    """The text lines for ``{version: figures}``; none when there are no figures."""
    if not versions:
        return []
    newest = sorted(versions.items(), key=lambda kv: -_int(kv[1].get("updated_ms")))
    lines = ["  live metrics (window / total):"]
    for version, figures in newest[:MAX_ROWS]:
        routes = figures.get("routes")
        if not isinstance(routes, dict) or not routes:
            lines.append(f"    {version}: {figures.get('error', 'no figures')}")
            continue
        updated = _when(figures.get("updated_ms"))
        for route, f in sorted(routes.items()):
            counts = " ".join(f"{k}={f.get(k, '?')}" for k in ("n", "unscored", "defaults"))
            values = f.get("metrics", {})
            names = [k for k in values if not k.endswith("_total")]
            names += [
                k.removesuffix("_total")
                for k in values
                if k.endswith("_total") and k.removesuffix("_total") not in names
            ]
            shown = [f"{n}={_fmt(values.get(n))}/{_fmt(values.get(f'{n}_total'))}" for n in names]
            parts = [counts, *shown, f"(updated {updated})"]
            lines.append(f"    {version} {route}: {' '.join(parts)}")
    if len(newest) > MAX_ROWS:
        lines.append(f"    ... {len(newest) - MAX_ROWS} older versions (--json lists them)")
    return lines


def print_live_metrics(console: Console, versions: dict[str, dict[str, Any]]) -> None:
    """Print :func:`live_metric_lines` (nothing when there are no figures)."""
    for line in live_metric_lines(versions):
        console.print(line, highlight=False, soft_wrap=True)


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


def _when(ms: Any) -> str:
    if not isinstance(ms, int):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))
