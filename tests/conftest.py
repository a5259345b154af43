"""Fixtures for every test: a checkpoint signing key for the whole session.

Stores refuse to commit without a signing key, and loaders refuse unsigned
checkpoints. ``signing_key_file`` (session, autouse) generates one key in a
temporary directory and sets ``DRIFTLOOP_STORE_SIGNING_KEY_FILE`` in the
environment, so every ``StoreConfig()`` in this process and every worker or
CLI subprocess a test starts signs and verifies with it. ``key_dir`` points
there too, so nothing a test does writes a key under the real home directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.checkpoints.signing import generate_key_file

SIGNING_ENV = {
    "file": "DRIFTLOOP_STORE_SIGNING_KEY_FILE",
    "key_dir": "DRIFTLOOP_STORE_KEY_DIR",
}


@pytest.fixture(scope="session", autouse=True)
def signing_key_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's private key file (PEM); its path is in the environment."""
    keys = tmp_path_factory.mktemp("signing-keys")
    path = keys / "session-signing.pem"
    generate_key_file(path)
    saved = {name: os.environ.get(name) for name in SIGNING_ENV.values()}
    os.environ[SIGNING_ENV["file"]] = str(path)
    os.environ[SIGNING_ENV["key_dir"]] = str(keys / "default")
    try:
        yield path
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
