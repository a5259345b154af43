"""The pointer commands refuse bad arguments and missing settings with one line, exit 2."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from services.cli import app

NO_STACK = {"DRIFTLOOP_REDIS_URL": "", "DRIFTLOOP_KAFKA_BOOTSTRAP": ""}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["status"], "DRIFTLOOP_REDIS_URL"),
        (["pointer", "restore"], "DRIFTLOOP_REDIS_URL"),
        (["promote", "fraud", "fraud-000001"], "DRIFTLOOP_KAFKA_BOOTSTRAP"),
        (["canary", "fraud", "fraud-000002"], "--percent"),
        (["canary", "fraud"], "--clear"),
        (["canary", "fraud", "--clear", "--percent", "5"], "--percent"),
        (["shadow", "fraud"], "--clear"),
        (["shadow", "fraud", "fraud-000002", "--clear"], "--clear"),
    ],
)
def test_refusals_are_one_line_and_exit_2(args: list[str], says: str) -> None:
    result = CliRunner().invoke(app, args, env=NO_STACK)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ")
    assert says in lines[0]


def test_every_pointer_command_is_registered() -> None:
    result = CliRunner().invoke(app, ["--help"])
    for name in ("promote", "rollback", "canary", "shadow", "status", "pointer"):
        assert name in result.stdout
