"""An in-memory :class:`~services.checkpoints.storage.CheckpointStorage`: the unit tests' twin.

:class:`MemoryStorage` keeps every directory of every model in dicts and
behaves like :class:`~services.checkpoints.storage.LocalStorage` where the
store can tell: a save is invisible until ``finalize`` (then it appears
whole, manifest included, like the local rename), a pending save shows as an
in-flight work directory, removal of a manifest leaves an uncommitted
directory, quarantine moves a directory aside with its note. With
``read_only`` every write raises :class:`~schemas.errors.CheckpointError`, and
:attr:`MemoryStorage.writes` counts the writes attempted, so a test can prove
a reader never writes.

Not for production: nothing survives the process, and locks are only
per-object.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import threading
from collections.abc import Iterator

from schemas.errors import CheckpointError
from schemas.manifest import MANIFEST_NAME, check_file_name
from services.checkpoints import layout
from services.checkpoints.storage import Payload, PendingCheckpoint, WritableBuffer, buffers

_counter = itertools.count(1)


class _MemoryPending:
    def __init__(self, storage: MemoryStorage, model: str, version: str) -> None:
        self._storage = storage
        self._model = model
        self._version = version
        self._name = f"{layout.TMP_PREFIX}0-mem{next(_counter)}"
        self._files: dict[str, bytes] = {}
        storage._dirs(model)[self._name] = self._files
        storage._live.add((model, self._name))

    def write(self, name: str, data: Payload) -> str:
        blob = b"".join(buffers(data))
        self._files[check_file_name(name)] = blob
        return hashlib.sha256(blob).hexdigest()

    def read(self, name: str) -> bytes:
        return self._files[check_file_name(name)]

    def finalize(self, manifest: bytes) -> None:
        dirs = self._storage._dirs(self._model)
        if self._version in dirs:
            raise CheckpointError("checkpoint directory already exists", version=self._version)
        self._files[MANIFEST_NAME] = manifest
        dirs[self._version] = dirs.pop(self._name)  # the "rename": the commit
        self._storage._live.discard((self._model, self._name))

    def abort(self) -> None:
        self._storage._dirs(self._model).pop(self._name, None)
        self._storage._live.discard((self._model, self._name))


class MemoryStorage:
    """Checkpoints in process memory (a :class:`~services.checkpoints.storage.CheckpointStorage`).

    Parameters
    ----------
    url
        What :attr:`url` and the locations report.
    read_only
        Refuse every write (raise :class:`CheckpointError`), counting the attempts.
    """

    def __init__(self, url: str = "memory://store", *, read_only: bool = False) -> None:
        self._url = url.rstrip("/")
        self.read_only = read_only
        #: model -> directory name -> file name -> bytes
        self.models_: dict[str, dict[str, dict[str, bytes]]] = {}
        self.meta: dict[tuple[str, str], bytes] = {}
        self.quarantine_dirs: dict[str, dict[str, dict[str, bytes]]] = {}
        #: Writes attempted (refused ones included): 0 proves a process only read.
        self.writes = 0
        self._live: set[tuple[str, str]] = set()
        self._locks: dict[str, threading.Lock] = {}

    def _dirs(self, model: str) -> dict[str, dict[str, bytes]]:
        return self.models_.setdefault(model, {})

    def _write(self, what: str, model: str) -> None:
        self.writes += 1
        if self.read_only:
            raise CheckpointError(
                f"the in-memory storage is read-only: cannot {what}", model=model, path=self._url
            )

    # -- reads ----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self._url

    def location(self, model: str, version: str) -> str:
        return f"{self._url}/{model}/{version}"

    def _file(self, model: str, version: str, name: str) -> bytes:
        folder = self.models_.get(model, {}).get(version)
        if folder is None:
            raise FileNotFoundError(self.location(model, version))
        try:
            return folder[check_file_name(name)]
        except KeyError:
            raise FileNotFoundError(f"{self.location(model, version)}/{name}") from None

    def read_file(self, model: str, version: str, name: str) -> bytes:
        return bytes(self._file(model, version, name))

    def read_buffer(self, model: str, version: str, name: str) -> WritableBuffer:
        return bytearray(self._file(model, version, name))

    def read_manifest(self, model: str, version: str) -> bytes | None:
        return self.models_.get(model, {}).get(version, {}).get(MANIFEST_NAME)

    def models(self) -> list[str]:
        return sorted(m for m, dirs in self.models_.items() if dirs or self._has_meta(m))

    def _has_meta(self, model: str) -> bool:
        return any(m == model for m, _ in self.meta)

    def entries(self, model: str) -> list[str]:
        return sorted(self.models_.get(model, {}))

    def in_flight(self, model: str, name: str) -> bool:
        return (model, name) in self._live

    def stale_temp_files(self, model: str) -> list[str]:
        return []  # bookkeeping files are replaced in one step here

    def quarantined(self, model: str) -> list[tuple[str, bytes | None]]:
        folder = self.quarantine_dirs.get(model, {})
        return [(name, files.get(layout.QUARANTINE_NOTE)) for name, files in sorted(folder.items())]

    def read_meta(self, model: str, name: str) -> bytes | None:
        return self.meta.get((model, name))

    # -- writes ---------------------------------------------------------------------------------

    def begin(self, model: str, version: str) -> PendingCheckpoint:
        self._write(f"write checkpoint {version}", model)
        return _MemoryPending(self, model, version)

    def replace_manifest(self, model: str, version: str, manifest: bytes) -> None:
        self._write(f"rewrite the manifest of {version}", model)
        folder = self.models_.get(model, {}).get(version)
        if folder is None or MANIFEST_NAME not in folder:
            raise FileNotFoundError(f"{self.location(model, version)}/{MANIFEST_NAME}")
        folder[MANIFEST_NAME] = manifest

    def remove_manifest(self, model: str, version: str) -> None:
        self._write(f"delete checkpoint {version}", model)
        self.models_.get(model, {}).get(version, {}).pop(MANIFEST_NAME, None)

    def remove_entry(self, model: str, name: str) -> None:
        self._write(f"delete {name}", model)
        self.models_.get(model, {}).pop(name, None)

    def quarantine(self, model: str, name: str, note: bytes) -> str:
        self._write(f"quarantine {name}", model)
        dest = layout.quarantine_name(name)
        files = dict(self._dirs(model).pop(name))
        files[layout.QUARANTINE_NOTE] = note
        self.quarantine_dirs.setdefault(model, {})[dest] = files
        return dest

    def purge_quarantined(self, model: str, name: str) -> None:
        self._write(f"purge {name}", model)
        self.quarantine_dirs.get(model, {}).pop(name, None)

    def write_meta(self, model: str, name: str, data: bytes) -> None:
        self._write(f"write {name}", model)
        self.meta[(model, name)] = bytes(data)

    @contextlib.contextmanager
    def lock(self, model: str) -> Iterator[None]:
        self._write("take the version lock", model)
        with self._locks.setdefault(model, threading.Lock()):
            yield
