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
