"""Helpers shared by the checkpoint store tests (no pytest fixtures: plain functions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from schemas.manifest import CheckpointManifest, ManifestDraft, decode_manifest, encode_manifest
from services.checkpoints import CheckpointStore, StoreConfig


def make_store(tmp: Path, **config: Any) -> CheckpointStore:
    """A store rooted in ``tmp/hot`` (fsync off: these tests do not pull the power)."""
    config.setdefault("fsync", False)
    config.setdefault("keep_latest", 1000)
    return CheckpointStore(StoreConfig(root=tmp / "hot", **config))


def save(
    store: CheckpointStore, model: str = "fraud", step: int = 0, **draft: Any
) -> CheckpointManifest:
    """Commit a small checkpoint with two files whose bytes depend on ``step``."""
    files = {
        "model.safetensors": f"weights-{step}".encode() * 10,
        "state/optim.json": f'{{"step": {step}}}'.encode(),
    }
    draft.setdefault("trigger", "count")
    return store.commit(model, files, ManifestDraft(step=step, **draft))


def resign(store: CheckpointStore, model: str, version: str) -> CheckpointManifest:
    """Sign the (edited) hot ``manifest.json`` of ``version`` again with the store's key.

    What a writer holding the key would commit: for tests about damage the
    signature cannot catch (a bug in the writer, not an outsider's edit).
    """
    path = store.config.root / model / version / "manifest.json"
    manifest = store.require_signer().sign(decode_manifest(path.read_bytes()))
    path.write_bytes(encode_manifest(manifest))
    return manifest
