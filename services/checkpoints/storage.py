"""The storage seam: where checkpoint bytes go, and how a save commits.

:class:`CheckpointStorage` is the narrow protocol the store writes and the
reader reads through; two implementations sit beside it (and, for unit
tests, :class:`~services.checkpoints.memory_storage.MemoryStorage`; a
read-only view: :class:`~services.checkpoints.readonly.ReadOnlyStorage`):

- :class:`LocalStorage` — a local directory. A save writes into a temporary
  directory ``{model}/.tmp-{pid}-{rand}`` inside the model directory, fsyncs
  every file and directory, writes ``manifest.json`` last, renames the
  directory to ``{model}/{version}`` and fsyncs the parent: the rename is the
  commit.
- :class:`FsspecStorage` — any fsspec URL (``file://``, ``s3://``,
  ``memory://`` in tests). Rename is not atomic there, so files are written
  straight into ``{model}/{version}/`` and ``manifest.json``, written last, is
  the commit marker. Until then a ``.writer`` marker names the writing
  process so GC leaves a live save alone.

A save is two explicit steps: :meth:`CheckpointStorage.begin` returns a
:class:`PendingCheckpoint`, its ``write`` calls add files, ``finalize`` commits
and ``abort`` throws the partial save away.

``write`` takes a :data:`Payload` — bytes, or a sequence of byte buffers
written back to back (a safetensors header then a view of the tensor's memory,
so no joined copy is made) — and returns the sha256 of exactly the bytes it
wrote, computed in the same pass (chunk by chunk: hash, then write). That hash
is what the manifest records, so a manifest cannot claim bytes that were not
written.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, Protocol, TypeAlias, runtime_checkable

import numpy
import orjson

from schemas.errors import CheckpointError, ConfigError, SchemaError
from schemas.manifest import MANIFEST_NAME, check_file_name
from services.checkpoints import layout
from services.checkpoints.config import StoreConfig
from services.config import redact_url

BytesLike: TypeAlias = bytes | bytearray | memoryview
#: A writable buffer the caller owns: decoded tensors may view it in place.
WritableBuffer: TypeAlias = bytearray | memoryview
#: The content of one file: bytes, or buffers written back to back.
Payload: TypeAlias = BytesLike | Sequence[BytesLike]

#: Hash-then-write granularity: large enough for few calls, small enough to stay in cache.
CHUNK = 1 << 20


def buffers(data: Payload) -> list[memoryview]:
    """``data`` as flat byte views (no copies)."""
    parts = [data] if isinstance(data, bytes | bytearray | memoryview) else list(data)
    return [memoryview(p).cast("B") for p in parts]


def payload_size(data: Payload) -> int:
    """Bytes in ``data``."""
    return sum(v.nbytes for v in buffers(data))


def payload_sha256(data: Payload) -> str:
    """sha256 hex of the bytes of ``data`` (for callers that need it without writing)."""
    h = hashlib.sha256()
    for view in buffers(data):
        h.update(view)
    return h.hexdigest()


def _hash_and_write(fh: BinaryIO, data: Payload) -> str:
    """Write ``data`` to ``fh`` chunk by chunk, hashing each chunk just before it is written."""
    h = hashlib.sha256()
    for view in buffers(data):
        for start in range(0, view.nbytes, CHUNK):
            chunk = view[start : start + CHUNK]
            h.update(chunk)
            fh.write(chunk)
    return h.hexdigest()


class PendingCheckpoint(Protocol):
    """A save in progress, returned by :meth:`CheckpointStorage.begin`."""

    def write(self, name: str, data: Payload) -> str:
        """Store one file (``name`` is a relative posix path); return the sha256 of its bytes."""

    def read(self, name: str) -> bytes:
        """Read back a file written so far (to verify a copy before committing it)."""

    def finalize(self, manifest: bytes) -> None:
        """Write ``manifest.json`` last and commit; the checkpoint is visible after."""

    def abort(self) -> None:
        """Remove whatever was written; safe to call after a failed write."""


@runtime_checkable
class HashingStorage(Protocol):
    """A storage that can hash a file while reading it (see :func:`read_hashed`)."""

    def read_buffer_hashed(self, model: str, version: str, name: str) -> tuple[WritableBuffer, str]:
        """The bytes of one file in a writable buffer, and their sha256 (hex)."""


def read_hashed(
    storage: CheckpointStorage, model: str, version: str, name: str
) -> tuple[WritableBuffer, str]:
    """The bytes of one file in a writable buffer, and their sha256 (hex): in one pass
    when ``storage`` reads and hashes together, else read, then hashed."""
    if isinstance(storage, HashingStorage):
        return storage.read_buffer_hashed(model, version, name)
    data = storage.read_buffer(model, version, name)
    return data, hashlib.sha256(data).hexdigest()


class CheckpointStorage(Protocol):
    """Where the files of committed checkpoints live (one tier)."""

    @property
    def url(self) -> str:
        """The root of this storage, as a path or URL (for messages and the catalog)."""

    def location(self, model: str, version: str) -> str:
        """Path or URL of a checkpoint directory."""

    def begin(self, model: str, version: str) -> PendingCheckpoint:
        """Start writing checkpoint ``version`` of ``model``."""

    def read_file(self, model: str, version: str, name: str) -> bytes:
        """The bytes of one file; raises FileNotFoundError when absent."""

    def read_buffer(self, model: str, version: str, name: str) -> WritableBuffer:
        """The bytes of one file in a writable buffer (tensors can view it without a copy)."""

    def read_manifest(self, model: str, version: str) -> bytes | None:
        """The ``manifest.json`` bytes, or None when the checkpoint is not committed."""

    def models(self) -> list[str]:
        """Names of model directories."""

    def entries(self, model: str) -> list[str]:
        """Every directory name under ``model``: committed, uncommitted and work dirs."""

    def in_flight(self, model: str, name: str) -> bool:
        """Whether ``name`` is being written (or removed) by a live process on this host."""

    def replace_manifest(self, model: str, version: str, manifest: bytes) -> None:
        """Replace the ``manifest.json`` of a committed checkpoint in one step.

        Only for adding a signature to a manifest written before signing
        existed (:meth:`CheckpointStore.adopt`); raises FileNotFoundError when
        the checkpoint has no manifest (it is not committed, or was removed).
        """

    def stale_temp_files(self, model: str) -> list[str]:
        """Temporary bookkeeping files (``.seq.{pid}.tmp``) whose writer is not alive."""

    def remove_manifest(self, model: str, version: str) -> None:
        """Delete ``manifest.json``: the checkpoint becomes uncommitted (first GC step)."""

    def remove_entry(self, model: str, name: str) -> None:
        """Delete a directory under ``model`` with everything in it."""

    def quarantine(self, model: str, name: str, note: bytes) -> str:
        """Move ``name`` to ``.quarantine/{name}-{ts}`` with ``note``; return that name."""

    def quarantined(self, model: str) -> list[tuple[str, bytes | None]]:
        """Quarantined directory names of ``model`` with their notes (None if unreadable)."""

    def purge_quarantined(self, model: str, name: str) -> None:
        """Delete one quarantined directory for good."""

    def read_meta(self, model: str, name: str) -> bytes | None:
        """A small per-model bookkeeping file (``.seq``, ``.pins.json``), or None."""

    def write_meta(self, model: str, name: str, data: bytes) -> None:
        """Replace a bookkeeping file (atomically where the storage can)."""

    def lock(self, model: str) -> contextlib.AbstractContextManager[None]:
        """Exclusive lock across processes for version assignment (no-op where impossible)."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _LocalPending:
    def __init__(self, storage: LocalStorage, model: str, version: str) -> None:
        self._storage = storage
        self._version = version
        self._model_dir = storage.root / model
        self._model_dir.mkdir(parents=True, exist_ok=True)
        self._tmp = self._model_dir / layout.temp_name()
        self._tmp.mkdir()
        self._dirs: set[Path] = {self._tmp}

    def write(self, name: str, data: Payload) -> str:
        path = self._tmp / check_file_name(name)
        if path.parent != self._tmp:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.update(p for p in path.parents if p.is_relative_to(self._tmp))
        with open(path, "xb") as fh:
            digest = _hash_and_write(fh, data)
            if self._storage.fsync:
                fh.flush()
                os.fsync(fh.fileno())
        return digest

    def read(self, name: str) -> bytes:
        return (self._tmp / check_file_name(name)).read_bytes()

    def finalize(self, manifest: bytes) -> None:
        with open(self._tmp / MANIFEST_NAME, "xb") as fh:
            fh.write(manifest)
            if self._storage.fsync:
                fh.flush()
                os.fsync(fh.fileno())
        if self._storage.fsync:
            for d in sorted(self._dirs, key=lambda p: len(p.parts), reverse=True):
                _fsync_dir(d)
        final = self._model_dir / self._version
        if final.exists():
            raise CheckpointError(
                "checkpoint directory already exists", version=self._version, path=str(final)
            )
        os.rename(self._tmp, final)
        if self._storage.fsync:
            _fsync_dir(self._model_dir)

    def abort(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)


class LocalStorage:
    """Checkpoints in a local directory, committed by an atomic rename."""

    def __init__(self, root: Path | str, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync

    @property
    def url(self) -> str:
        return str(self.root)

    def location(self, model: str, version: str) -> str:
        return str(self.root / model / version)

    def begin(self, model: str, version: str) -> PendingCheckpoint:
        return _LocalPending(self, model, version)

    def read_file(self, model: str, version: str, name: str) -> bytes:
        return (self.root / model / version / check_file_name(name)).read_bytes()

    def read_buffer(self, model: str, version: str, name: str) -> WritableBuffer:
        return self._read_into(model, version, name, None)

    def read_buffer_hashed(self, model: str, version: str, name: str) -> tuple[WritableBuffer, str]:
        """Like :meth:`read_buffer`, with the sha256 of the bytes read, computed while
        reading: each :data:`CHUNK` is hashed right after it was read, while it is
        still in cache, so verifying costs no second pass over memory."""
        h = hashlib.sha256()
        return self._read_into(model, version, name, h), h.hexdigest()

    def _read_into(
        self, model: str, version: str, name: str, h: hashlib._Hash | None
    ) -> WritableBuffer:
        with open(self.root / model / version / check_file_name(name), "rb", buffering=0) as fh:
            size = os.fstat(fh.fileno()).st_size
            # numpy.empty, not bytearray(size): no zero-fill pass over memory
            # the read overwrites anyway (a third of a large load's time).
            view = numpy.empty(size, dtype=numpy.uint8).data
            got = 0
            while got < size:
                n = fh.readinto(view[got : got + CHUNK] if h is not None else view[got:])
                if not n:
                    break
                if h is not None:
                    h.update(view[got : got + n])  # releases the GIL, like readinto
                got += n
            return view if got == size else view[:got]

    def read_manifest(self, model: str, version: str) -> bytes | None:
        try:
            return (self.root / model / version / MANIFEST_NAME).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _is_model(p.name))

    def entries(self, model: str) -> list[str]:
        model_dir = self.root / model
        if not model_dir.is_dir():
            return []
        return sorted(p.name for p in model_dir.iterdir() if p.is_dir())

    def in_flight(self, model: str, name: str) -> bool:
        pid = layout.work_dir_pid(name)
        return pid is not None and layout.pid_alive(pid)

    def replace_manifest(self, model: str, version: str, manifest: bytes) -> None:
        folder = self.root / model / version
        if not (folder / MANIFEST_NAME).is_file():
            raise FileNotFoundError(str(folder / MANIFEST_NAME))
        tmp = folder / f".{MANIFEST_NAME}.{os.getpid()}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(manifest)
            if self.fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, folder / MANIFEST_NAME)
        if self.fsync:
            _fsync_dir(folder)

    def stale_temp_files(self, model: str) -> list[str]:
        model_dir = self.root / model
        if not model_dir.is_dir():
            return []
        found = []
        for p in model_dir.iterdir():
            pid = layout.meta_temp_pid(p.name)
            if pid is not None and p.is_file() and not layout.pid_alive(pid):
                found.append(p.name)
        return sorted(found)

    def remove_manifest(self, model: str, version: str) -> None:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            (self.root / model / version / MANIFEST_NAME).unlink()
            if self.fsync:
                _fsync_dir(self.root / model / version)

    def remove_entry(self, model: str, name: str) -> None:
        path = self.root / model / name
        if not path.exists():
            return
        if path.is_file():  # a bookkeeping temp file
            path.unlink(missing_ok=True)
            return
        if layout.work_dir_pid(name) is None:
            # Rename first so a half-removed directory never looks like a version.
            trash = self.root / model / layout.trash_name()
            os.rename(path, trash)
            if self.fsync:
                _fsync_dir(self.root / model)
            path = trash
        shutil.rmtree(path, ignore_errors=True)

    def quarantine(self, model: str, name: str, note: bytes) -> str:
        folder = self.root / model / layout.QUARANTINE_DIR
        folder.mkdir(exist_ok=True)
        dest = layout.quarantine_name(name)
        os.rename(self.root / model / name, folder / dest)
        (folder / dest / layout.QUARANTINE_NOTE).write_bytes(note)
        if self.fsync:
            _fsync_dir(folder)
            _fsync_dir(self.root / model)
        return dest

    def quarantined(self, model: str) -> list[tuple[str, bytes | None]]:
        folder = self.root / model / layout.QUARANTINE_DIR
        if not folder.is_dir():
            return []
        out: list[tuple[str, bytes | None]] = []
        for p in sorted(folder.iterdir()):
            note = p / layout.QUARANTINE_NOTE
            out.append((p.name, note.read_bytes() if note.is_file() else None))
        return out

    def purge_quarantined(self, model: str, name: str) -> None:
        shutil.rmtree(self.root / model / layout.QUARANTINE_DIR / name, ignore_errors=True)

    def read_meta(self, model: str, name: str) -> bytes | None:
        try:
            return (self.root / model / name).read_bytes()
        except FileNotFoundError:
            return None

    def write_meta(self, model: str, name: str, data: bytes) -> None:
        model_dir = self.root / model
        model_dir.mkdir(parents=True, exist_ok=True)
        tmp = model_dir / layout.meta_temp_name(name)
        with open(tmp, "wb") as fh:
            fh.write(data)
            if self.fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, model_dir / name)
        if self.fsync:
            _fsync_dir(model_dir)

    @contextlib.contextmanager
    def lock(self, model: str) -> Iterator[None]:
        model_dir = self.root / model
        model_dir.mkdir(parents=True, exist_ok=True)
        with open(model_dir / ".lock", "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _is_model(name: str) -> bool:
    try:
        layout.check_model(name)
    except SchemaError:
        return False
    return True


class _FsspecPending:
    def __init__(self, storage: FsspecStorage, model: str, version: str) -> None:
        self._fs = storage.fs
        self._dir = storage.location(model, version)
        if self._fs.exists(f"{self._dir}/{MANIFEST_NAME}"):
            raise CheckpointError("checkpoint already committed", version=version, path=self._dir)
        self._fs.makedirs(self._dir, exist_ok=True)
        marker = {"pid": os.getpid(), "host": socket.gethostname()}
        self._fs.pipe_file(f"{self._dir}/{layout.WRITER_MARKER}", orjson.dumps(marker))

    def write(self, name: str, data: Payload) -> str:
        path = f"{self._dir}/{check_file_name(name)}"
        if "/" in name:
            self._fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        blob = data if isinstance(data, bytes) else b"".join(buffers(data))
        self._fs.pipe_file(path, blob)
        return hashlib.sha256(blob).hexdigest()

    def read(self, name: str) -> bytes:
        data: bytes = self._fs.cat_file(f"{self._dir}/{check_file_name(name)}")
        return data

    def finalize(self, manifest: bytes) -> None:
        self._fs.pipe_file(f"{self._dir}/{MANIFEST_NAME}", manifest)
        with contextlib.suppress(FileNotFoundError):
            self._fs.rm_file(f"{self._dir}/{layout.WRITER_MARKER}")

    def abort(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._fs.rm(self._dir, recursive=True)


class FsspecStorage:
    """Checkpoints under any fsspec URL; ``manifest.json`` written last is the commit marker."""

    def __init__(self, url: str) -> None:
        self._url = url
        import fsspec  # here: a local store never needs it

        fs, root = fsspec.core.url_to_fs(url)
        self.fs = fs
        self.root = str(root).rstrip("/")

    @property
    def url(self) -> str:
        return self._url

    def location(self, model: str, version: str) -> str:
        return f"{self.root}/{model}/{version}"

    def begin(self, model: str, version: str) -> PendingCheckpoint:
        return _FsspecPending(self, model, version)

    def read_file(self, model: str, version: str, name: str) -> bytes:
        data: bytes = self.fs.cat_file(f"{self.location(model, version)}/{check_file_name(name)}")
        return data

    def read_buffer(self, model: str, version: str, name: str) -> WritableBuffer:
        return bytearray(self.read_file(model, version, name))

    def read_manifest(self, model: str, version: str) -> bytes | None:
        try:
            data: bytes = self.fs.cat_file(f"{self.location(model, version)}/{MANIFEST_NAME}")
        except (FileNotFoundError, NotADirectoryError):
            return None
        return data

    def _dirs(self, path: str) -> list[str]:
        try:
            found = self.fs.ls(path, detail=True)
        except FileNotFoundError:
            return []
        return sorted(
            str(e["name"]).rstrip("/").rsplit("/", 1)[-1] for e in found if e["type"] == "directory"
        )

    def models(self) -> list[str]:
        return [name for name in self._dirs(self.root) if _is_model(name)]

    def entries(self, model: str) -> list[str]:
        return self._dirs(f"{self.root}/{model}")

    def in_flight(self, model: str, name: str) -> bool:
        try:
            raw = self.fs.cat_file(f"{self.root}/{model}/{name}/{layout.WRITER_MARKER}")
            marker = orjson.loads(raw)
        except (FileNotFoundError, orjson.JSONDecodeError):
            return False
        return bool(
            marker.get("host") == socket.gethostname()
            and layout.pid_alive(int(marker.get("pid", 0)))
        )

    def replace_manifest(self, model: str, version: str, manifest: bytes) -> None:
        path = f"{self.location(model, version)}/{MANIFEST_NAME}"
        if not self.fs.exists(path):
            raise FileNotFoundError(path)
        self.fs.pipe_file(path, manifest)  # one put: an object store replaces it whole

    def stale_temp_files(self, model: str) -> list[str]:
        return []  # bookkeeping files are written in one put here

    def remove_manifest(self, model: str, version: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(f"{self.location(model, version)}/{MANIFEST_NAME}")

    def remove_entry(self, model: str, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(f"{self.root}/{model}/{name}", recursive=True)

    def quarantine(self, model: str, name: str, note: bytes) -> str:
        # Not atomic on an object store: the copy is complete before the original goes.
        dest = layout.quarantine_name(name)
        target = f"{self.root}/{model}/{layout.QUARANTINE_DIR}/{dest}"
        self.fs.copy(f"{self.root}/{model}/{name}", target, recursive=True)
        self.fs.pipe_file(f"{target}/{layout.QUARANTINE_NOTE}", note)
        self.fs.rm(f"{self.root}/{model}/{name}", recursive=True)
        return dest

    def quarantined(self, model: str) -> list[tuple[str, bytes | None]]:
        out: list[tuple[str, bytes | None]] = []
        folder = f"{self.root}/{model}/{layout.QUARANTINE_DIR}"
        for name in self._dirs(folder):
            try:
                note: bytes | None = self.fs.cat_file(f"{folder}/{name}/{layout.QUARANTINE_NOTE}")
            except FileNotFoundError:
                note = None
            out.append((name, note))
        return out

    def purge_quarantined(self, model: str, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(f"{self.root}/{model}/{layout.QUARANTINE_DIR}/{name}", recursive=True)

    def read_meta(self, model: str, name: str) -> bytes | None:
        try:
            data: bytes = self.fs.cat_file(f"{self.root}/{model}/{name}")
        except FileNotFoundError:
            return None
        return data

    def write_meta(self, model: str, name: str, data: bytes) -> None:
        self.fs.makedirs(f"{self.root}/{model}", exist_ok=True)
        self.fs.pipe_file(f"{self.root}/{model}/{name}", data)

    def lock(self, model: str) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


def open_tiers(config: StoreConfig) -> tuple[CheckpointStorage, CheckpointStorage | None]:
    """The hot tier at ``config.root`` and the cold tier ``config.cold_url`` names (if any).

    Opening creates nothing (a missing root is created by the first write).

    Raises
    ------
    ConfigError
        The cold tier's URL cannot be opened (the message carries it without credentials).
    """
    hot = LocalStorage(config.root, fsync=config.fsync)
    if not config.cold_url:
        return hot, None
    try:
        return hot, open_storage(config.cold_url, fsync=config.fsync)
    except (ValueError, ImportError, OSError) as exc:
        raise ConfigError(
            f"cannot open the cold tier: {exc}", url=redact_url(config.cold_url)
        ) from exc


def open_storage(url: str, *, fsync: bool = True) -> CheckpointStorage:
    """A plain path gives :class:`LocalStorage`; a URL with a scheme :class:`FsspecStorage`."""
    if "://" not in url:
        return LocalStorage(url, fsync=fsync)
    return FsspecStorage(url)
