"""Encoding a captured state into the files of one checkpoint, full or differential.

:func:`encode_save` is pure (no I/O): it turns a :class:`CheckpointState` and
the parent's in-memory state into the bytes to write, the files to reference
from older checkpoints, ``state/index.json`` and the manifest fields that
describe them (kind, base version, state digest, variants). The checkpointer
hands the result to the store's ``commit``.

Tensors live in *namespaces* of the index: ``"tensors"`` (exact values,
parts ``{"value"}``) and ``"int8"`` (the quantized variant, parts ``{"q",
"scale", "zero"}`` or ``{"raw"}``). Every part has the tensor's rows as its
first dimension, so a differential save stores the changed rows of every
part the same way and a load applies them the same way.

No tensor byte is hashed twice: a full tensor's file is written as a header
plus a view of the snapshot's memory and hashed by the store while it writes
it; :meth:`EncodedSave.digest` then composes the state digest from those
hashes, from the hashes of referenced files, and — only for tensors stored as
changed rows, whose full bytes are not written — from a hash of the tensor.
Blobs (river pickles) enter the digest the same way: the store's hash of the
blob file written, or the referenced file's recorded hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from schemas.manifest import FileEntry
from services.checkpoints.state.delta import ParentState, TensorChange, diff_tensor
from services.checkpoints.state.encoding import (
    INDEX_FORMAT,
    INDEX_NAME,
    blob_file,
    encode_index,
    encode_tensors,
    tensor_file,
    tensor_file_digest,
    tensor_payload,
)
from services.checkpoints.state.quantize import max_abs_error, quantize
from services.checkpoints.state.state import CheckpointState, compose_digest
from services.checkpoints.storage import Payload, payload_size

if TYPE_CHECKING:
    import torch

    Parts = dict[str, torch.Tensor]
else:
    from services.lazy_torch import torch  # imported at first use (river-only workers never)


@dataclass(frozen=True)
class EncodeOptions:
    """How :func:`encode_save` stores a state.

    Attributes
    ----------
    delta:
        Store only what changed since the parent when there is one.
    full_every:
        At most this many consecutive deltas (caps the manifests a load opens).
    full_after_fraction:
        A full checkpoint once the chain's deltas wrote this fraction of its
        base's bytes (bounds the bytes a load reads: see :mod:`.delta`); None:
        ``full_every`` alone decides (a fixed cadence).
    delta_max_fraction:
        Store changed rows only while they cost less than this fraction of the full tensor.
    int8:
        Also write the ``"int8"`` variant of ``int8_groups`` (row-wise, ``int8_symmetric``).
    """

    delta: bool = True
    full_every: int = 64
    full_after_fraction: float | None = 0.5
    delta_max_fraction: float = 0.5
    int8: bool = False
    int8_groups: tuple[str, ...] = ("model",)
    int8_symmetric: bool = False


@dataclass
class EncodedSave:
    """The bytes and manifest fields of one checkpoint, ready for ``store.commit``.

    ``files`` may view the snapshot's tensors: commit before the snapshot is
    reused. ``tensor_digests`` holds the canonical digests known without the
    store (referenced files, hashed row-stored tensors); ``digest_files`` maps
    each other tensor to the file whose store-computed sha256 is its digest.
    ``blob_digests`` and ``blob_files`` do the same for blobs.
    """

    files: dict[str, Payload]
    file_refs: dict[str, FileEntry]
    index: dict[str, Any]
    kind: Literal["full", "delta"]
    base_version: str | None
    chain: int
    #: Bytes the chain's base wrote, and all its deltas up to this one (0 for a full).
    base_bytes: int = 0
    chain_bytes: int = 0
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    tensor_digests: dict[str, str] = field(default_factory=dict)
    digest_files: dict[str, str] = field(default_factory=dict)
    blob_digests: dict[str, str] = field(default_factory=dict)
    blob_files: dict[str, str] = field(default_factory=dict)

    @property
    def bytes_written(self) -> int:
        """Bytes of the files this save writes (references excluded)."""
        return sum(payload_size(b) for b in self.files.values())

    def digest(self, written: Mapping[str, FileEntry]) -> str:
        """The state digest, given the entries the store computed while writing ``files``."""
        digests = dict(self.tensor_digests)
        for qualified, name in self.digest_files.items():
            digests[qualified] = written[name].sha256
        blobs = dict(self.blob_digests)
        for blob, name in self.blob_files.items():
            blobs[blob] = written[name].sha256
        return compose_digest(digests, blobs)


def _encode_namespace(
    namespace: str,
    tensors: dict[str, torch.Tensor],
    changes: dict[str, TensorChange],
    parent: ParentState | None,
    parts_of: Callable[[torch.Tensor], Parts],
    out: EncodedSave,
    symmetric: bool = False,
    digests: bool = False,
) -> dict[str, dict[str, Any]]:
    """Encode one namespace's tensors under ``changes``; returns its index entries.

    ``digests``: record each tensor's canonical digest source in ``out`` (the
    exact-state namespace only).
    """
    parent_entries: dict[str, Any] = parent.index.get(namespace, {}) if parent else {}
    entries: dict[str, dict[str, Any]] = {}
    for qualified, tensor in tensors.items():
        entry: dict[str, Any] = {
            "dtype": str(tensor.dtype).removeprefix("torch."),
            "shape": list(tensor.shape),
        }
        change = changes.get(qualified, TensorChange("full"))
        previous = parent_entries.get(qualified)
        if change.mode != "full" and previous is None:
            change = TensorChange("full")
        if change.mode == "same" and parent is not None and previous is not None:
            ref = parent.reference(previous["file"]) if "file" in previous else None
            if ref is not None:
                out.file_refs[ref.name] = ref
                entry["file"] = ref.name
                if digests:
                    out.tensor_digests[qualified] = ref.sha256
            else:
                entry["same"] = True
                if digests:
                    out.tensor_digests[qualified] = tensor_file_digest(tensor)
            entry["meta"] = previous.get("meta", {})
        elif change.mode == "rows" and change.indices is not None:
            name = tensor_file(f"rows/{namespace}", qualified)
            parts = parts_of(tensor.index_select(0, change.indices))
            out.files[name] = encode_tensors({"indices": change.indices, **parts})
            entry.update(rows=name, count=int(change.indices.numel()))
            entry["meta"] = _merge_meta(
                previous.get("meta", {}) if previous else {}, tensor, parts, change, symmetric
            )
            if digests:
                out.tensor_digests[qualified] = tensor_file_digest(tensor)
        else:
            name = tensor_file(namespace, qualified)
            parts = parts_of(tensor)
            if digests:
                out.files[name] = tensor_payload(parts["value"])
                out.digest_files[qualified] = name
            else:
                out.files[name] = encode_tensors(parts)
            entry["file"] = name
            entry["meta"] = _merge_meta({}, tensor, parts, change, symmetric)
        entries[qualified] = entry
    return entries


def _merge_meta(
    previous: dict[str, Any],
    tensor: torch.Tensor,
    parts: Parts,
    change: TensorChange,
    symmetric: bool,
) -> dict[str, Any]:
    """Per-tensor facts kept in the index; for int8, an upper bound of the error."""
    if "q" not in parts and "raw" not in parts:
        return {}
    rows = tensor if change.indices is None else tensor.index_select(0, change.indices)
    err = max_abs_error(rows, parts, symmetric=symmetric)
    return {"max_abs_error": max(err, float(previous.get("max_abs_error", 0.0)))}


def encode_save(
    state: CheckpointState, *, parent: ParentState | None, options: EncodeOptions
) -> EncodedSave:
    """Encode ``state`` as a full checkpoint, or as a delta against ``parent``.

    A delta is written when ``options.delta``, a parent exists and its chain
    may grow (:meth:`ParentState.extends`: fewer than ``full_every`` deltas,
    which wrote less than ``full_after_fraction`` of the base's bytes); the
    parent's version then becomes the manifest's ``parent_version`` and its
    chain's base the ``base_version``. The index records the chain's length
    and bytes, so a restarted process continues the same policy.
    """
    as_delta = (
        options.delta
        and parent is not None
        and parent.extends(
            full_every=options.full_every, full_after_fraction=options.full_after_fraction
        )
    )
    out = EncodedSave(
        files={},
        file_refs={},
        index={},
        kind="delta" if as_delta else "full",
        base_version=parent.base_version if as_delta and parent else None,
        chain=parent.chain + 1 if as_delta and parent else 0,
    )
    tensors = dict(sorted(state.tensors().items()))
    changes: dict[str, TensorChange] = {}
    if as_delta and parent is not None:
        parent_tensors = parent.state.tensors()
        for qualified, tensor in tensors.items():
            changes[qualified] = diff_tensor(
                tensor, parent_tensors.get(qualified), max_fraction=options.delta_max_fraction
            )
    index: dict[str, Any] = {"format": INDEX_FORMAT, "chain": out.chain}
    index["tensors"] = _encode_namespace(
        "tensors",
        tensors,
        changes,
        parent if as_delta else None,
        lambda t: {"value": t},
        out,
        digests=True,
    )
    if options.int8:
        chosen = {q: t for q, t in tensors.items() if q.split("/", 1)[0] in options.int8_groups}
        before = set(out.files) | set(out.file_refs)
        index["int8"] = _encode_namespace(
            "int8",
            chosen,
            changes,
            parent if as_delta else None,
            lambda t: quantize(t, symmetric=options.int8_symmetric),
            out,
        )
        files = sorted((set(out.files) | set(out.file_refs)) - before)
        error = max(
            (e["meta"].get("max_abs_error", 0.0) for e in index["int8"].values()), default=0.0
        )
        out.variants["int8"] = {
            "files": files,
            "groups": list(options.int8_groups),
            "scheme": "symmetric" if options.int8_symmetric else "affine",
            "max_abs_error": error,
        }
    if "ema" in state.groups:
        out.variants["ema"] = {
            "group": "ema",
            "files": sorted(
                e.get("file") or e.get("rows") or ""
                for q, e in index["tensors"].items()
                if q.startswith("ema/")
            ),
        }
    index["documents"] = state.documents
    index["blobs"] = {}
    for name, data in sorted(state.blobs.items()):
        fname = blob_file(name)
        index["blobs"][name] = fname
        ref = parent.reference(fname) if as_delta and parent else None
        if ref is not None and ref.sha256 == hashlib.sha256(data).hexdigest():
            out.file_refs[fname] = ref
            out.blob_digests[name] = ref.sha256
        else:
            out.files[fname] = data
            out.blob_files[name] = fname
    own = sum(payload_size(b) for b in out.files.values())
    if as_delta and parent is not None:
        out.base_bytes, out.chain_bytes = parent.base_bytes, parent.chain_bytes + own
    else:
        out.base_bytes, out.chain_bytes = own, 0
    index["base_bytes"], index["chain_bytes"] = out.base_bytes, out.chain_bytes
    out.index = index
    out.files[INDEX_NAME] = encode_index(index)
    return out
