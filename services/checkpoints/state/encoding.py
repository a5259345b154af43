"""How a :class:`CheckpointState` maps onto the named files of a checkpoint.

Layout inside a checkpoint directory::

    state/index.json                        what every file holds (written every save)
    tensors/{group}/{name}.safetensors      one tensor per file, full value ("value")
    rows/tensors/{group}/{name}.safetensors changed rows of a tensor ("indices", "value")
    int8/{group}/{name}.safetensors         row-wise int8 copy ("q", "scale", "zero" | "raw")
    rows/int8/{group}/{name}.safetensors    changed rows of that copy
    blobs/{name}                            opaque bytes (river pickles)

``state/index.json`` holds the JSON documents inline and, per namespace
(``"tensors"``, ``"int8"``) and tensor (``"{group}/{name}"``), one of:
``{"file": ...}`` (the full value, stored here or referenced from an older
checkpoint), ``{"rows": ..., "count": k}`` (the
parent's value with ``k`` rows replaced) or ``{"same": true}`` (the parent's
value unchanged). One file per tensor makes "unchanged tensor" mean
"unchanged file", which differential saves reference instead of rewriting.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any, Protocol

import orjson
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from schemas.errors import CheckpointCorruptError
from schemas.manifest import CheckpointManifest

INDEX_NAME = "state/index.json"
INDEX_FORMAT = 1

_SAFE = re.compile(r"[^A-Za-z0-9_.+-]")


class StateReader(Protocol):
    """One committed checkpoint, as the storage layer's ``CheckpointReader`` exposes it."""

    @property
    def manifest(self) -> CheckpointManifest: ...

    def read(self, name: str) -> bytes:
        """The verified bytes of a file (raises CheckpointCorruptError on mismatch)."""
        ...


def _segment(text: str) -> str:
    """A file-name segment for ``text``: unsafe characters as ``=XX``, long names hashed."""
    seg = _SAFE.sub(lambda m: "".join(f"={b:02X}" for b in m.group().encode()), text)
    if not seg or not (seg[0].isalnum() or seg[0] == "_"):
        seg = "_" + seg
    if len(seg) > 100:
        seg = seg[:60] + "+" + hashlib.sha256(text.encode()).hexdigest()[:32]
    return seg


def tensor_file(kind: str, qualified: str) -> str:
    """File name of a tensor's file: ``tensor_file("tensors", "model/fc.weight")``."""
    group, _, name = qualified.partition("/")
    return f"{kind}/{_segment(group)}/{_segment(name)}.safetensors"


def blob_file(name: str) -> str:
    """File name of an opaque blob."""
    return f"blobs/{_segment(name)}"


def encode_tensor(tensor: torch.Tensor, key: str = "value") -> bytes:
    """safetensors bytes holding one tensor under ``key``."""
    return st_save({key: tensor.detach().contiguous()})


def encode_tensors(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """safetensors bytes holding several (unshared) tensors."""
    return st_save({k: v.detach().contiguous() for k, v in tensors.items()})


def decode_tensors(
    data: bytes, *, name: str, manifest: CheckpointManifest
) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; malformed bytes are a corrupt checkpoint."""
    try:
        return st_load(data)
    except Exception as exc:  # safetensors raises its own SafetensorError and others
        raise CheckpointCorruptError(
            f"file is not valid safetensors: {exc}",
            model=manifest.model,
            version=manifest.version,
            path=name,
        ) from exc


def encode_index(index: dict[str, Any]) -> bytes:
    """``state/index.json`` bytes (sorted keys, so unchanged content gives unchanged bytes)."""
    return orjson.dumps(index, option=orjson.OPT_SORT_KEYS)


def read_index(reader: StateReader) -> dict[str, Any]:
    """Read and check ``state/index.json`` of a checkpoint.

    Raises
    ------
    CheckpointCorruptError
        When the checkpoint has no index, or it is not an index this code can read.
    """
    manifest = reader.manifest
    if manifest.file(INDEX_NAME) is None:
        raise CheckpointCorruptError(
            "checkpoint has no state index",
            model=manifest.model,
            version=manifest.version,
            path=INDEX_NAME,
        )
    try:
        index = orjson.loads(reader.read(INDEX_NAME))
    except orjson.JSONDecodeError as exc:
        raise CheckpointCorruptError(
            f"state index is not JSON: {exc}",
            model=manifest.model,
            version=manifest.version,
            path=INDEX_NAME,
        ) from exc
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        raise CheckpointCorruptError(
            "state index has an unknown format",
            model=manifest.model,
            version=manifest.version,
            path=INDEX_NAME,
        )
    return index
