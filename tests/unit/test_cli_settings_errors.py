"""Bad settings, as an operator mistypes them: one line on stderr, exit code 2, no traceback.

Guards issue 8 item 7: on the code before it, each case below ended in a Python
traceback (exit 1) — a ValidationError from pydantic-settings, an OverflowError
from SQLite, a FileExistsError from the catalog — or, for a bad Kafka port,
tried to connect to it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli import app
from tests.unit.store_helpers import make_store, save

runner = CliRunner()
SECRET = "s3cr3t-do-not-print"


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    store = make_store(tmp_path)
    save(store)
    store.close()
    return tmp_path / "hot"


def invoke(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    result = runner.invoke(app, args, env=env)
    return result.exit_code, result.stdout + result.stderr


def assert_one_line_exit_2(code: int, output: str, *needles: str) -> None:
    assert code == 2, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0]


def test_a_store_setting_that_is_not_a_number(store_dir: Path) -> None:
    code, output = invoke(
        ["checkpoints", "list", "--store", str(store_dir)],
        env={"DRIFTLOOP_STORE_KEEP_LATEST": "abc"},
    )
    assert_one_line_exit_2(code, output, "DRIFTLOOP_STORE_KEEP_LATEST", "valid integer")


@pytest.mark.parametrize("command", ["list", "verify", "reindex", "pin"])
def test_a_store_that_is_a_file(tmp_path: Path, command: str) -> None:
    target = tmp_path / "not-a-dir"
    target.write_text("hello")
    extra = ["fraud", "fraud-000001", "prod"] if command == "pin" else []
    code, output = invoke(["checkpoints", command, *extra, "--store", str(target)])
    assert_one_line_exit_2(code, output, "not a directory", str(target))
    assert target.read_text() == "hello"


@pytest.mark.parametrize(
    ("bootstrap", "needle"),
    [
        ("localhost:99999", "port must be 1-65535"),
        ("localhost:0", "port must be 1-65535"),
        ("broker-1:9092,broker-2:ninety", "port must be 1-65535"),
    ],
)
def test_a_kafka_port_out_of_range(bootstrap: str, needle: str) -> None:
    code, output = invoke(["up"], env={"DRIFTLOOP_KAFKA_BOOTSTRAP": bootstrap})
    assert_one_line_exit_2(code, output, "DRIFTLOOP_KAFKA_BOOTSTRAP", needle)


def test_an_unknown_kafka_security_protocol() -> None:
    code, output = invoke(["up"], env={"DRIFTLOOP_KAFKA_SECURITY_PROTOCOL": "SASL_TLS"})
    assert_one_line_exit_2(code, output, "DRIFTLOOP_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")


def test_a_redis_port_out_of_range_is_refused_without_printing_the_url() -> None:
    code, output = invoke(["up"], env={"DRIFTLOOP_REDIS_URL": f"redis://:{SECRET}@r:99999/0"})
    assert_one_line_exit_2(code, output, "DRIFTLOOP_REDIS_URL", "out of range")
    assert SECRET not in output


def test_a_refused_setting_is_named_but_its_value_is_not_printed() -> None:
    code, output = invoke(["up"], env={"DRIFTLOOP_REDIS_URL": f"http://app:{SECRET}@r:6379"})
    assert_one_line_exit_2(code, output, "DRIFTLOOP_REDIS_URL", "redis://")
    assert SECRET not in output


@pytest.mark.parametrize(
    "args",
    [
        ["--since", "99999999999999999999"],  # epoch ms past year 9999
        ["--until", "99999999999d"],  # 274 million years ago
        ["--since", "1" + "0" * 400 + "d"],  # a float that overflows to inf
    ],
)
def test_a_time_out_of_range(store_dir: Path, args: list[str]) -> None:
    code, output = invoke(["checkpoints", "list", "--store", str(store_dir), *args])
    assert code == 2, output
    assert "Traceback" not in output
    assert "out of range" in output or "cannot read time" in output


def test_a_limit_sqlite_cannot_hold(store_dir: Path) -> None:
    code, output = invoke(
        ["checkpoints", "list", "--store", str(store_dir), "--limit", "99999999999999999999"]
    )
    assert code == 2, output
    assert "Traceback" not in output
