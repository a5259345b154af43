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

import functools
import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from schemas.errors import CheckpointCorruptError
from schemas.manifest import CheckpointManifest

if TYPE_CHECKING:
    import torch
else:
    from services.lazy_torch import torch  # imported at first use (river-only workers never)

INDEX_NAME = "state/index.json"
INDEX_FORMAT = 1

_SAFE = re.compile(r"[^A-Za-z0-9_.+-]")


class StateReader(Protocol):
    """One committed checkpoint, as the storage layer's ``CheckpointFiles`` exposes it."""

    @property
    def manifest(self) -> CheckpointManifest: ...

    def read(self, name: str) -> bytes:
        """The verified bytes of a file (raises CheckpointCorruptError on mismatch)."""
        ...

    def read_buffer(self, name: str) -> bytearray | memoryview:
        """The verified bytes of a file in a writable buffer the caller owns."""
        ...

    def read_buffer_unhashed(self, name: str) -> bytearray | memoryview:
        """The bytes of a file, size checked but not hashed (for bytes a later hash covers)."""
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
    from safetensors.torch import save as st_save

    return st_save({key: tensor.detach().contiguous()})


def encode_tensors(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """safetensors bytes holding several (unshared) tensors."""
    from safetensors.torch import save as st_save

    return st_save({k: v.detach().contiguous() for k, v in tensors.items()})


_DTYPE_NAMES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}


@functools.cache
def _dtype_codes() -> tuple[dict[torch.dtype, str], dict[str, torch.dtype]]:
    """safetensors' dtype codes by torch dtype, and back (built at first use: torch
    is imported only by processes that handle tensors)."""
    codes = {getattr(torch, name): code for name, code in _DTYPE_NAMES.items()}
    return codes, {code: dtype for dtype, code in codes.items()}


def tensor_payload(tensor: torch.Tensor, key: str = "value") -> list[bytes | memoryview]:
    """A one-tensor safetensors file as ``[header, view of the tensor's bytes]`` (no copy).

    The concatenation equals ``safetensors.torch.save({key: tensor})``; dtypes
    this encoder does not know fall back to that (one copy).
    """
    flat = tensor.detach().reshape(-1).contiguous()
    code = _dtype_codes()[0].get(flat.dtype)
    if code is None or flat.device.type != "cpu":
        return [encode_tensor(tensor, key)]
    nbytes = flat.numel() * flat.element_size()
    meta = {key: {"dtype": code, "shape": list(tensor.shape), "data_offsets": [0, nbytes]}}
    header = json.dumps(meta, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    data = flat.view(torch.uint8).numpy().data if nbytes else memoryview(b"")
    return [len(header).to_bytes(8, "little") + header, data]


def tensor_file_digest(tensor: torch.Tensor) -> str:
    """sha256 hex of the one-tensor file :func:`tensor_payload` writes for ``tensor``."""
    h = hashlib.sha256()
    for part in tensor_payload(tensor):
        h.update(part)
    return h.hexdigest()


def _view_tensors(data: bytearray | memoryview) -> dict[str, torch.Tensor] | None:
    """Tensors viewing ``data`` in place, or None when the file is not plain enough."""
    if len(data) < 8:
        return None
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        return None
    header = json.loads(bytes(data[8 : 8 + size]))
    if not isinstance(header, dict):
        return None
    header.pop("__metadata__", None)
    start = 8 + size
    out: dict[str, torch.Tensor] = {}
    for key, info in header.items():
        dtype = _dtype_codes()[1].get(str(info.get("dtype"))) if isinstance(info, dict) else None
        if dtype is None:
            return None
        shape = [int(d) for d in info["shape"]]
        begin, end = (int(x) for x in info["data_offsets"])
        count = math.prod(shape)
        itemsize = torch.empty(0, dtype=dtype).element_size()
        if not 0 <= begin <= end <= len(data) - start or count * itemsize != end - begin:
            return None
        if count == 0:
            out[key] = torch.empty(shape, dtype=dtype)
            continue
        if (start + begin) % itemsize:
            return None
        out[key] = torch.frombuffer(data, dtype=dtype, count=count, offset=start + begin).reshape(
            shape
        )
    return out


def decode_tensors(
    data: bytes | bytearray | memoryview, *, name: str, manifest: CheckpointManifest
) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; malformed bytes are a corrupt checkpoint.

    From a writable buffer (the store's ``read_buffer``) the tensors view the
    buffer without a copy (the caller must not reuse it); from ``bytes``, or
    for a file this fast path does not handle, safetensors copies them out.
    """
    try:
        if isinstance(data, bytearray) or (isinstance(data, memoryview) and not data.readonly):
            viewed = _view_tensors(data)
            if viewed is not None:
                return viewed
        from safetensors.torch import load as st_load

        return st_load(bytes(data))
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
