"""``driftloop status`` shows each version's live metrics as window / total."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from services.cli.live_metrics_view import MAX_ROWS, live_metric_lines, print_live_metrics


def _figures(n: int, updated_ms: int, **metrics: float) -> dict[str, Any]:
    return {
        "routes": {"live": {"n": n, "unscored": 1, "defaults": 2, "metrics": metrics}},
        "updated_ms": updated_ms,
    }


def test_each_version_and_route_is_a_line_with_window_and_total() -> None:
    lines = live_metric_lines(
        {
            "fraud-000001": _figures(40, 1_000, accuracy=0.5, accuracy_total=0.625),
            "fraud-000002": {
                "routes": {
                    "canary": {"n": 7, "unscored": 0, "defaults": 0, "metrics": {}},
                    "live": {"n": 3, "unscored": 0, "defaults": 0, "metrics": {"log_loss": 0.2}},
                },
                "updated_ms": 2_000,
            },
        }
    )
    assert lines == [
        "  live metrics (window / total):",
        # newest update first; each route of a version is a line of its own
        "    fraud-000002 canary: n=7 unscored=0 defaults=0 (updated 1970-01-01 00:00:02 UTC)",
        "    fraud-000002 live: n=3 unscored=0 defaults=0 log_loss=0.2000/-"
        " (updated 1970-01-01 00:00:02 UTC)",
        "    fraud-000001 live: n=40 unscored=1 defaults=2 accuracy=0.5000/0.6250"
        " (updated 1970-01-01 00:00:01 UTC)",
    ]


def test_a_damaged_field_is_shown_and_nothing_when_there_are_no_figures() -> None:
    lines = live_metric_lines({"fraud-000009": {"error": "not a JSON object"}})
    assert lines[1] == "    fraud-000009: not a JSON object"
    assert live_metric_lines({}) == []


def test_text_lists_the_most_recently_updated_versions_only() -> None:
    versions = {f"fraud-{i:06d}": _figures(i, i) for i in range(MAX_ROWS + 3)}
    console = Console(record=True, width=60)
    print_live_metrics(console, versions)
    text = console.export_text()
    assert f"fraud-{MAX_ROWS + 2:06d} live" in text
    assert "fraud-000000" not in text
    assert "3 older versions" in text
