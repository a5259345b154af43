"""``driftloop worker --help`` says what an operator needs: the datadir setting
and what a manual checkpoint covers (issue 9, "Also found")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from services.cli import app


def test_help_names_the_datadir_setting_and_what_sigusr1_covers() -> None:
    result = CliRunner().invoke(app, ["worker", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "DRIFTLOOP_WORKER_DATADIR" in text
    assert "--datadir" in text
    assert "SIGUSR1" in text
    assert "not those already fetched from Kafka but not yet trained on" in text


def test_datadir_option_reaches_the_worker_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--datadir`` sets what DRIFTLOOP_WORKER_DATADIR sets: faust's state
    directory (``streams.worker.build`` then makes no temporary one)."""
    import streams.worker

    seen: dict[str, Any] = {}

    def fake_build(role: str, **options: Any) -> str:
        seen["datadir"] = options["worker"].datadir
        return "built"

    monkeypatch.setattr(streams.worker, "build", fake_build)
    monkeypatch.setattr(streams.worker, "run", lambda built, **_: seen.update(ran=built))
    monkeypatch.setenv("DRIFTLOOP_WORKER_DATADIR", "/from/env")
    result = CliRunner().invoke(app, ["worker", "--role", "joiner", "--datadir", "/from/cli"])
    assert result.exit_code == 0, result.stderr
    assert seen == {"datadir": Path("/from/cli"), "ran": "built"}
    seen.clear()
    assert CliRunner().invoke(app, ["worker", "--role", "joiner"]).exit_code == 0
    assert seen["datadir"] == Path("/from/env")
