"""``driftloop serve``: registered, and settings that cannot work are one line and exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli import app
from services.learning.config import example_path

runner = CliRunner()


def test_serve_is_a_command() -> None:
    result = runner.invoke(app, ["serve", "--help"])
    assert result.exit_code == 0
    assert "--model" in result.output
    assert "--server-id" in result.output


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({"DRIFTLOOP_REDIS_URL": ""}, [], "needs Redis"),
        ({"DRIFTLOOP_WORKER_MODELS": ""}, ["--no-config"], "no model configuration"),
        ({"DRIFTLOOP_REDIS_URL": "redis://127.0.0.1:1/0"}, ["--model", "nope"], "no such model"),
        (
            {"DRIFTLOOP_REDIS_URL": "redis://127.0.0.1:1/0"},
            ["--missing-store"],
            "no checkpoint store",
        ),
    ],
)
def test_settings_that_cannot_work_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    args: list[str],
    message: str,
) -> None:
    monkeypatch.setenv("DRIFTLOOP_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    store = tmp_path / "store"
    store.mkdir()
    argv = ["serve", "--config", str(example_path("river_logreg")), "--store", str(store)]
    if "--no-config" in args:
        argv = ["serve", "--store", str(store)]
    elif "--missing-store" in args:
        argv[-1] = str(tmp_path / "absent")
    else:
        argv += args
    result = runner.invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert message in result.output
