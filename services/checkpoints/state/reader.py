"""Loading a checkpoint back into a :class:`CheckpointState`, walking delta chains.

A full checkpoint holds every tensor; a delta holds, per tensor, a full file,
the rows changed since its parent, or nothing (unchanged). :func:`load_state`
opens the checkpoint and its parents back to the chain's base, and rebuilds
each tensor from the newest full file at or below the requested version plus
the rows stored above it, oldest first. The rebuilt state's digest must equal
the one recorded at save time, else :class:`CheckpointCorruptError`.

Every byte is read through the storage layer's reader, which verifies size
and sha256 (for referenced files too); blobs are additionally checked against
the manifest here before anyone unpickles them. Tensor files are read into a
buffer the decoded tensors view, so no copy is made out of safetensors, and
up to :data:`READ_THREADS` files are read and verified at once (both release
the GIL).

The state digest check costs a pass only where it proves something new. A
tensor decoded straight from one verified file is exactly the bytes whose
sha256 the manifest lists, and that sha256 *is* the tensor's canonical digest
(see :mod:`.state`), so it is taken from the manifest; a tensor rebuilt by
applying rows along a delta chain is hashed, because only the digest proves
the reconstruction. For a full checkpoint that means no tensor byte is hashed
twice. A blob contributes the sha256 it was verified with. Manifests with an
older digest are checked their way (``tf1:``: tensors only; bare hex: every
tensor hashed).

For a rebuilt tensor that holds for the chain too: its base file (the full
value the rows are applied to) is read with its size checked but not its
sha256, because hashing the rebuilt tensor covers every byte of it that the
state keeps. Should the rebuild fail — the digest differs, or the base does
not decode — the checkpoint is read again with every file's sha256 checked,
so the error names the damaged file with both hashes, as for a full
checkpoint. Rows files and blobs are always hashed.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

from schemas.errors import CheckpointCorruptError, CheckpointNotFoundError
from schemas.manifest import CheckpointManifest
from services.checkpoints.state.delta import apply_rows
from services.checkpoints.state.encoding import (
    StateReader,
    decode_tensors,
    read_index,
    tensor_file_digest,
)
from services.checkpoints.state.quantize import dequantize
from services.checkpoints.state.state import (
    DIGEST_PREFIX,
    DIGEST_PREFIX_V1,
    CheckpointState,
    compose_digest,
    compose_digest_v1,
    legacy_state_digest,
)

if TYPE_CHECKING:
    import torch
else:
    from services.lazy_torch import torch  # imported at first use (river-only workers never)

log = logging.getLogger(__name__)

#: Longest delta chain a load follows before calling the lineage broken.
MAX_CHAIN = 1024

#: Threads reading and verifying a checkpoint's files at once. Reading and
#: sha256 both release the GIL, so files are verified in parallel; tensors
#: are still decoded and applied in index order, so the first bad file in
#: that order is the one reported.
READ_THREADS = min(4, os.cpu_count() or 1)
#: Digests composed from per-tensor sha256s (a rebuilt tensor's is hashed on load).
_HASHED_DIGESTS = (DIGEST_PREFIX, DIGEST_PREFIX_V1)


class StateSource(Protocol):
    """The part of the storage layer a load needs: a ``CheckpointStore`` or ``CheckpointReader``."""

    def open(self, model: str, version: str | None = None) -> Any: ...


class _Level:
    """One checkpoint of a chain: its reader and index."""

    def __init__(self, reader: StateReader) -> None:
        self.reader = reader
        self.manifest: CheckpointManifest = reader.manifest
        self.index = read_index(reader)
        self._reads: dict[str, Future[bytearray | memoryview]] = {}
        #: Files read without their sha256 (a rebuilt tensor's base: the digest covers it).
        self.unhashed: set[str] = set()

    def _read(self, name: str) -> bytearray | memoryview:
        if name in self.unhashed:
            return self.reader.read_buffer_unhashed(name)
        return self.reader.read_buffer(name)

    def prefetch(self, name: str, pool: ThreadPoolExecutor) -> None:
        """Start reading (and verifying) ``name`` on ``pool``."""
        if name not in self._reads:
            self._reads[name] = pool.submit(self._read, name)

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        read = self._reads.pop(name, None)
        data = read.result() if read is not None else self._read(name)
        return decode_tensors(data, name=name, manifest=self.manifest)

    def sha256(self, name: str) -> str:
        entry = self.manifest.file(name)
        assert entry is not None  # read() refused names the manifest lacks  # noqa: S101 - narrows a type that validation guarantees; guards no input
        return entry.sha256


def _chain(store: StateSource, model: str, version: str | None) -> list[_Level]:
    levels = [_Level(store.open(model, version))]
    while levels[-1].manifest.kind == "delta":
        top = levels[-1].manifest
        if top.parent_version is None or len(levels) > MAX_CHAIN:
            raise CheckpointCorruptError(
                "delta checkpoint has a broken parent chain", model=model, version=top.version
            )
        levels.append(_Level(store.open(model, top.parent_version)))
    return levels


def _resolve(
    levels: list[_Level], namespace: str, qualified: str
) -> tuple[dict[str, torch.Tensor], str | None]:
    """The parts of one tensor at the top of the chain, and the verified sha256 of the
    file they came from when no rows were applied (None when rebuilt)."""
    pending: list[dict[str, torch.Tensor]] = []
    for level in levels:
        entry = level.index.get(namespace, {}).get(qualified)
        if entry is None:
            break
        if "file" in entry:
            parts = level.tensors(entry["file"])
            for rows in reversed(pending):
                indices = rows["indices"]
                for key, part in parts.items():
                    apply_rows(part, indices, rows[key])
            return parts, None if pending else level.sha256(entry["file"])
        if "rows" in entry:
            pending.append(level.tensors(entry["rows"]))
    top = levels[0].manifest
    raise CheckpointCorruptError(
        "tensor cannot be reconstructed: no full value in its delta chain",
        model=top.model,
        version=top.version,
        tensor=qualified,
    )


def _files_needed(levels: list[_Level], qualified: str) -> Iterator[tuple[_Level, str]]:
    """The files :func:`_resolve` reads for one tensor, in the order it reads them."""
    for level in levels:
        entry = level.index.get("tensors", {}).get(qualified)
        if entry is None:
            return
        if "file" in entry:
            yield level, entry["file"]
            return
        if "rows" in entry:
            yield level, entry["rows"]


def _split(qualified: str) -> tuple[str, str]:
    group, _, name = qualified.partition("/")
    return group, name


def load_state(
    store: StateSource, model: str, version: str | None = None, *, verify: bool = True
) -> tuple[CheckpointState, CheckpointManifest, dict[str, Any]]:
    """Rebuild the exact state of a checkpoint (``version=None``: the newest).

    Returns the state, its manifest and its ``state/index.json``.

    Raises
    ------
    CheckpointNotFoundError
        When the store has no such checkpoint.
    CheckpointCorruptError
        When a file fails verification, the chain is broken, or the rebuilt
        state's digest differs from the manifest's ``state_digest``.
    """
    levels = _chain(store, model, version)
    expected = levels[0].manifest.state_digest
    if not (verify and expected is not None and expected.startswith(_HASHED_DIGESTS)):
        return _load(levels, model, verify=verify)
    # The digest hashes every rebuilt tensor, so its base file is read unhashed: a
    # damaged base fails the digest. Only then are the files read again, each with
    # its sha256 checked, so that the error names the damaged file and its hashes.
    for qualified in levels[0].index.get("tensors", {}):
        needed = list(_files_needed(levels, qualified))
        if len(needed) > 1:  # rows above a full file: rebuilt, hence hashed
            level, base = needed[-1]
            level.unhashed.add(base)
    if not any(level.unhashed for level in levels):
        return _load(levels, model, verify=verify)
    try:
        return _load(levels, model, verify=verify)
    except (CheckpointCorruptError, IndexError, ValueError, RuntimeError) as exc:
        log.warning(
            "checkpoint %s/%s did not rebuild (%s); reading it again with every file's"
            " sha256 checked",
            model,
            levels[0].manifest.version,
            exc,
        )
    return _load(_chain(store, model, levels[0].manifest.version), model, verify=verify)


def _load(
    levels: list[_Level], model: str, *, verify: bool
) -> tuple[CheckpointState, CheckpointManifest, dict[str, Any]]:
    top = levels[0]
    state = CheckpointState(
        documents=dict(top.index.get("documents", {})), rng=dict(top.manifest.rng)
    )
    file_digests: dict[str, str | None] = {}
    pool = ThreadPoolExecutor(READ_THREADS, "driftloop-load") if READ_THREADS > 1 else None
    try:
        if pool is not None:
            for qualified in top.index.get("tensors", {}):
                for level, file in _files_needed(levels, qualified):
                    level.prefetch(file, pool)
        for qualified in top.index.get("tensors", {}):
            group, name = _split(qualified)
            parts, file_digests[qualified] = _resolve(levels, "tensors", qualified)
            state.groups.setdefault(group, {})[name] = parts["value"]
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    blob_digests: dict[str, str] = {}
    for name, fname in top.index.get("blobs", {}).items():
        state.blobs[name], blob_digests[name] = _read_blob(top.reader, fname)
    expected = top.manifest.state_digest
    if verify and expected is not None:
        if expected.startswith(_HASHED_DIGESTS):
            tensors = state.tensors()
            # A verified file's sha256 is its tensor's canonical digest; a
            # rebuilt one is hashed, on READ_THREADS threads.
            rebuilt = [q for q, sha in file_digests.items() if sha is None]
            with ThreadPoolExecutor(max(1, min(READ_THREADS, len(rebuilt)))) as hashers:
                hashed = dict(
                    zip(
                        rebuilt,
                        hashers.map(tensor_file_digest, (tensors[q] for q in rebuilt)),
                        strict=True,
                    )
                )
            tensor_digests = {q: sha or hashed[q] for q, sha in file_digests.items()}
            if expected.startswith(DIGEST_PREFIX):
                actual = compose_digest(tensor_digests, blob_digests)
            else:
                actual = compose_digest_v1(tensor_digests)
        else:
            actual = legacy_state_digest(state)
        if actual != expected:
            raise CheckpointCorruptError(
                "reconstructed state does not match the state digest recorded at save time",
                model=model,
                version=top.manifest.version,
                expected=expected,
                actual=actual,
            )
    return state, top.manifest, top.index


def read_verified(reader: StateReader, name: str) -> bytes:
    """Read a file and check its sha256 against the manifest (before e.g. unpickling)."""
    return _read_blob(reader, name)[0]


def _read_blob(reader: StateReader, name: str) -> tuple[bytes, str]:
    """The bytes of file ``name`` checked against the manifest, and their sha256 (hex)."""
    manifest = reader.manifest
    entry = manifest.file(name)
    data = reader.read(name)
    actual = hashlib.sha256(data).hexdigest()
    if entry is None or entry.sha256 != actual:
        raise CheckpointCorruptError(
            "file does not match the manifest",
            model=manifest.model,
            version=manifest.version,
            path=name,
            expected=entry.sha256 if entry else None,
            actual=actual,
        )
    return data, actual


def load_variant(
    store: StateSource, model: str, version: str | None, variant: str
) -> tuple[CheckpointState, CheckpointManifest]:
    """Load a named variant as a module-shaped state (group ``"model"`` and its document).

    ``"int8"``: the dequantized row-wise int8 copy (approximate; the manifest
    records its maximum absolute error). ``"ema"``: the EMA shadow weights.

    Raises
    ------
    CheckpointNotFoundError
        When the checkpoint has no such variant.
    """
    levels = _chain(store, model, version)
    top = levels[0]
    info = top.manifest.variants.get(variant)
    if info is None:
        raise CheckpointNotFoundError(
            f"checkpoint has no variant {variant!r}",
            model=model,
            version=top.manifest.version,
            variant=variant,
            available=",".join(sorted(top.manifest.variants)) or "none",
        )
    documents = top.index.get("documents", {})
    state = CheckpointState(rng=dict(top.manifest.rng))
    if variant == "ema":
        full, _, _ = load_state(store, model, top.manifest.version)
        weights = full.groups.get(info.get("group", "ema"), {})
        state.groups["model"] = {k.removeprefix("weights."): v for k, v in weights.items()}
        state.documents["model"] = documents.get("model")
        return state, top.manifest
    symmetric = info.get("scheme") == "symmetric"
    for qualified, entry in top.index.get(variant, {}).items():
        group, name = _split(qualified)
        parts, _ = _resolve(levels, variant, qualified)
        dtype = getattr(torch, entry["dtype"])
        state.groups.setdefault(group, {})[name] = dequantize(
            parts, tuple(entry["shape"]), dtype, symmetric=symmetric
        )
        if group in documents:
            state.documents[group] = documents[group]
    return state, top.manifest
