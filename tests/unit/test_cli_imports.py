"""`driftloop` starts without importing what its command does not use.

Every command is registered when ``services.cli`` is imported, so anything a
command module imports at its top is paid by every command (``driftloop
status`` waited seconds for torch). Model code, the streaming framework and
the web server are imported inside the commands that need them.
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "river", "faust", "aiokafka", "fastapi", "uvicorn", "safetensors")


def test_importing_the_cli_imports_no_model_streaming_or_web_framework() -> None:
    probe = f"import sys, services.cli\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "", f"imported by `import services.cli`: {out.stdout.strip()}"


def test_every_top_level_command_is_mapped_to_the_module_that_registers_it() -> None:
    import typer.main

    from services.cli import COMMAND_MODULES, app, build_app

    everything = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    assert sorted(everything) == sorted(COMMAND_MODULES)
    for name, module in COMMAND_MODULES.items():
        alone = typer.main.get_command(build_app([module])).commands  # type: ignore[attr-defined]
        assert name in alone


_WORKER_HELP = """
import sys
from services.cli import main
sys.argv = ["driftloop", "worker", "--help"]
try:
    main()
except SystemExit:
    pass
print("loaded:" + ",".join(m for m in {modules!r} if m in sys.modules))
"""


def test_a_command_imports_only_its_own_module() -> None:
    """``driftloop worker`` needs no Redis client, checkpoint tables or server code."""
    modules = (
        "services.cli.pointer_commands",
        "services.cli.checkpoint_commands",
        "services.cli.serve_commands",
        "redis",
    )
    out = subprocess.run(
        [sys.executable, "-c", _WORKER_HELP.format(modules=modules)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert "--role" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "loaded:"
