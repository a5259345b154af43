"""The object users and the online trainer call to save and load model state.

:class:`Checkpointer` ties the state layer to the store: it captures state
through an adapter (:class:`~.state.torch_state.TorchAdapter`,
:class:`~.state.river_state.RiverAdapter`, or a ready
:class:`~.state.state.CheckpointState`), snapshots it, encodes it (full or
differential, plus the int8 / EMA variants) and commits it — on a background
thread when ``async_saves`` is on — and loads it back, verified.

Memory: the snapshots of pending saves (at most ``max_in_flight`` of them
and ``max_pending_mb`` in all, but always at least one), plus, with
differential saves on, the parent's snapshot kept for diffing. A model whose
state is over half the budget therefore holds about two copies of its tensor
state; small models may queue many saves. After a restart the parent is read
back from the store on the first save.

:meth:`Checkpointer.save` blocks while a new save is not admitted;
:meth:`Checkpointer.submit` can instead decline at once (``block=False``),
which is how the online trainer coalesces count and interval checkpoints
rather than stall training (see :mod:`services.learning.trainer`).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.errors import CheckpointError, CheckpointNotFoundError, SchemaError
from schemas.manifest import CheckpointManifest, FileEntry, ManifestDraft, Trigger
from services.checkpoints.async_saver import AsyncSaver
from services.checkpoints.state.delta import ParentState
from services.checkpoints.state.reader import load_state, load_variant
from services.checkpoints.state.snapshot import SnapshotPool
from services.checkpoints.state.state import CheckpointState
from services.checkpoints.state.writer import EncodedSave, EncodeOptions, encode_save
from services.checkpoints.storage import Payload

log = logging.getLogger(__name__)


class CheckpointerConfig(BaseSettings):
    """How checkpoints are saved (``DRIFTLOOP_CHECKPOINTER_*``).

    ``async_saves``: encode and commit on a background thread, at most
    ``max_in_flight`` saves pending whose snapshots hold at most
    ``max_pending_mb`` (a single save may be bigger; it then runs alone).
    ``delta``: differential saves; a full one once the deltas since the last
    full one wrote ``full_after_fraction`` of its bytes, or after
    ``full_every`` deltas (``full_after_fraction=None``: every
    ``full_every + 1``-th save; see :mod:`.state.delta`); rows stored while
    cheaper than ``delta_max_fraction`` of the tensor. ``int8``: also write the row-wise
    int8 variant of ``int8_groups``. ``snapshot``: ``copy`` into reused
    buffers or ``clone``. ``verify_on_load``: check the state digest after a
    load (file hashes are always checked; the digest costs a pass only over
    tensors rebuilt from a delta chain's rows).
    """

    model_config = SettingsConfigDict(
        env_prefix="DRIFTLOOP_CHECKPOINTER_", frozen=True, extra="ignore"
    )

    async_saves: bool = True
    max_in_flight: int = Field(default=64, ge=1)
    max_pending_mb: float = Field(default=64.0, gt=0)
    delta: bool = True
    full_every: int = Field(default=64, ge=0)
    full_after_fraction: float | None = Field(default=0.5, gt=0)
    delta_max_fraction: float = Field(default=0.5, gt=0, le=1)
    int8: bool = False
    int8_groups: tuple[str, ...] = ("model",)
    int8_symmetric: bool = False
    snapshot: Literal["copy", "clone"] = "copy"
    verify_on_load: bool = True

    def encode_options(self) -> EncodeOptions:
        return EncodeOptions(
            delta=self.delta,
            full_every=self.full_every,
            full_after_fraction=self.full_after_fraction,
            delta_max_fraction=self.delta_max_fraction,
            int8=self.int8,
            int8_groups=self.int8_groups,
            int8_symmetric=self.int8_symmetric,
        )


class StateAdapter(Protocol):
    """Something whose state can be captured into, and restored from, a checkpoint."""

    def capture(self) -> CheckpointState: ...

    def restore(self, state: CheckpointState) -> Any: ...


class Store(Protocol):
    """The part of :class:`~services.checkpoints.store.CheckpointStore` the checkpointer uses."""

    def commit(
        self,
        model: str,
        files: Mapping[str, Payload],
        draft: ManifestDraft,
        *,
        finish: Callable[[ManifestDraft, Mapping[str, FileEntry]], ManifestDraft] | None = None,
    ) -> CheckpointManifest: ...

    def open(self, model: str, version: str | None = None) -> Any: ...

    def latest(self, model: str) -> CheckpointManifest | None: ...


@dataclass
class LoadedCheckpoint:
    """A loaded (and verified) state with its manifest."""

    state: CheckpointState
    manifest: CheckpointManifest

    def restore(self, adapter: StateAdapter) -> Any:
        """Restore into ``adapter`` (a TorchAdapter, RiverAdapter, ...); returns what it returns."""
        return adapter.restore(self.state)


@functools.cache
def code_version() -> dict[str, str]:
    """driftloop's package version and, when available, the git commit (read once)."""
    out = {"driftloop": _package_version()}
    commit = os.environ.get("DRIFTLOOP_GIT_COMMIT") or _git_commit(Path(__file__).resolve())
    if commit:
        out["git_commit"] = commit
    return out


def _package_version() -> str:
    try:
        return metadata.version("driftloop")
    except metadata.PackageNotFoundError:
        return "unknown"


def _git_commit(start: Path) -> str | None:
    """The commit HEAD points at, read from ``.git`` files (no subprocess)."""
    for folder in start.parents:
        git = folder / ".git"
        if not git.is_dir():
            continue
        try:
            head = (git / "HEAD").read_text().strip()
            if not head.startswith("ref: "):
                return head
            ref = head[5:]
            if (git / ref).is_file():
                return (git / ref).read_text().strip()
            for line in (git / "packed-refs").read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split(" ", 1)[0]
        except OSError:
            return None
        return None
    return None


class Checkpointer:
    """Saves and loads the full state of models into a checkpoint store.

    Parameters
    ----------
    store:
        A :class:`~services.checkpoints.store.CheckpointStore` (or anything
        with its ``commit`` / ``open`` / ``latest``).
    config:
        Save policy; defaults from ``DRIFTLOOP_CHECKPOINTER_*``.
    """

    def __init__(self, store: Store, config: CheckpointerConfig | None = None) -> None:
        self.store = store
        self.config = config if config is not None else CheckpointerConfig()
        self.options = self.config.encode_options()
        # Idle buffer sets kept for reuse; they never outnumber the sets in use at the
        # busiest moment, which the pending-bytes budget bounds.
        self.pool = SnapshotPool(self.config.snapshot, keep=self.config.max_in_flight + 1)
        self.saver = (
            AsyncSaver(
                max_in_flight=self.config.max_in_flight,
                max_pending_bytes=int(self.config.max_pending_mb * 1e6),
            )
            if self.config.async_saves
            else None
        )
        self._parents: dict[str, ParentState | None] = {}
        #: Versions the next save of a model must extend (set by :meth:`resume_from`).
        self._resume: dict[str, str | None] = {}
        self._lock = threading.Lock()
        #: Bytes written by the last committed save (what a differential save saved).
        self.last_bytes_written = 0

    # -- saving ------------------------------------------------------------------------------

    def save(
        self,
        model: str,
        state_or_adapter: CheckpointState | StateAdapter,
        *,
        step: int,
        examples_seen: int = 0,
        trigger: Trigger = "manual",
        metrics: Mapping[str, float] | None = None,
        key_metric: str | None = None,
        offsets: Mapping[str, Mapping[str, int]] | None = None,
        config: Mapping[str, Any] | None = None,
        example_digest: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Future[CheckpointManifest]:
        """Save a checkpoint of ``model``; returns a future of its manifest.

        The caller pays for capturing and snapshotting the state; with
        ``async_saves`` encoding and committing happen on the saver thread
        and the future completes when the checkpoint is committed (without,
        it is already done). Blocks while the save is not admitted (see
        :class:`CheckpointerConfig`).

        Raises
        ------
        CheckpointError
            An earlier asynchronous save failed (raised once, chained), or
            this save failed (synchronous mode).
        """
        meta = self._meta(
            model,
            step,
            examples_seen,
            trigger,
            metrics,
            key_metric,
            offsets,
            config,
            example_digest,
            extra,
        )
        future = self._submit(model, state_or_adapter, meta, block=True, handled=False)
        assert future is not None  # noqa: S101  # a blocking submit always submits (for mypy)
        return future

    def submit(
        self,
        model: str,
        state_or_adapter: CheckpointState | StateAdapter,
        *,
        block: bool = True,
        step: int,
        examples_seen: int = 0,
        trigger: Trigger = "manual",
        metrics: Mapping[str, float] | None = None,
        key_metric: str | None = None,
        offsets: Mapping[str, Mapping[str, int]] | None = None,
        config: Mapping[str, Any] | None = None,
        example_digest: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Future[CheckpointManifest] | None:
        """Like :meth:`save`, for a caller that handles each save's outcome itself.

        A failed commit is reported only through the returned future (and
        logged at ERROR), never raised by this or a later call; in
        synchronous mode too, the future then carries the error. With
        ``block=False`` a save that is not admitted at once is not taken:
        None is returned and nothing was snapshotted.

        Raises
        ------
        SchemaError
            The manifest facts do not validate (nothing is saved).
        CheckpointError
            The checkpointer is closed.
        """
        meta = self._meta(
            model,
            step,
            examples_seen,
            trigger,
            metrics,
            key_metric,
            offsets,
            config,
            example_digest,
            extra,
        )
        return self._submit(model, state_or_adapter, meta, block=block, handled=True)

    def admits(self, nbytes: int = 0) -> bool:
        """Whether a save of ``nbytes`` of snapshot would be admitted now without waiting."""
        return self.saver is None or self.saver.admits(nbytes)

    @property
    def in_flight(self) -> int:
        """Saves queued or being committed now (0 in synchronous mode)."""
        return 0 if self.saver is None else self.saver.in_flight

    @staticmethod
    def _meta(
        model: str,
        step: int,
        examples_seen: int,
        trigger: Trigger,
        metrics: Mapping[str, float] | None,
        key_metric: str | None,
        offsets: Mapping[str, Mapping[str, int]] | None,
        config: Mapping[str, Any] | None,
        example_digest: str | None,
        extra: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "step": step,
            "examples_seen": examples_seen,
            "trigger": trigger,
            "metrics": dict(metrics or {}),
            "key_metric": key_metric,
            "offsets": {
                t: {str(p): o for p, o in parts.items()} for t, parts in (offsets or {}).items()
            },
            "config": dict(config or {}),
            "code_version": code_version(),
            "example_digest": example_digest,
            "extra": dict(extra or {}),
        }
        try:  # fail on the caller's thread, not later on the saver's
            ManifestDraft(**meta)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise SchemaError(first["msg"], field=field, model=model, step=step) from None
        return meta

    def _submit(
        self,
        model: str,
        state_or_adapter: CheckpointState | StateAdapter,
        meta: dict[str, Any],
        *,
        block: bool,
        handled: bool,
    ) -> Future[CheckpointManifest] | None:
        step = meta["step"]
        if self.saver is not None:
            if not block and not self.saver.admits(0):
                return None  # not even an empty snapshot fits: capture nothing
            captured = self._capture(state_or_adapter)

            def prepare() -> Callable[[], CheckpointManifest]:
                snapshot = self.pool.take(captured)
                return functools.partial(self._commit, model, snapshot, meta, pooled=True)

            return self.saver.submit(
                prepare,
                nbytes=captured.nbytes() + sum(len(b) for b in captured.blobs.values()),
                block=block,
                handled=handled,
                model=model,
                step=step,
                trigger=meta["trigger"],
            )
        future: Future[CheckpointManifest] = Future()
        captured = self._capture(state_or_adapter)
        snapshot = self.pool.take(captured) if self.options.delta else captured
        try:
            future.set_result(self._commit(model, snapshot, meta, pooled=self.options.delta))
        except Exception as exc:
            error = (
                exc
                if isinstance(exc, CheckpointError)
                else CheckpointError(f"checkpoint save failed: {exc}", model=model, step=step)
            )
            if not handled:
                if error is exc:
                    raise
                raise error from exc
            log.error("checkpoint save failed (model=%s, step=%s): %s", model, step, exc)
            error.__cause__ = None if error is exc else exc
            future.set_exception(error)
        return future

    @staticmethod
    def _capture(state_or_adapter: CheckpointState | StateAdapter) -> CheckpointState:
        if isinstance(state_or_adapter, CheckpointState):
            return state_or_adapter
        return state_or_adapter.capture()

    def resume_from(self, model: str, version: str | None) -> None:
        """Make the next save of ``model`` extend ``version`` (None: a full save, no parent).

        Called after the trainer restored ``version`` (or started over), which
        need not be the newest committed one: after a fallback restore the
        newest may not load, and no save may build a delta on it. The parent
        is read back on the next save; when its chain does not load
        completely, that save is full.
        """
        with self._lock:
            cached = self._parents.get(model)
            if version is not None and cached is not None and cached.version == version:
                self._resume.pop(model, None)
                return
            self._resume[model] = version

    def _parent(self, model: str) -> ParentState | None:
        """The parent of the next save of ``model``; read back from the store after a restart."""
        if model in self._resume:
            wanted = self._resume.pop(model)
            self._parents[model] = None if wanted is None else self._read_parent(model, wanted)
            return self._parents[model]
        if model in self._parents:
            return self._parents[model]
        try:
            latest = self.store.latest(model)
        except CheckpointError:  # e.g. unsigned: nothing of it is read, the next save is full
            log.warning("newest checkpoint does not verify; next save is full (model=%s)", model)
            latest = None
        parent = None if latest is None else self._read_parent(model, latest.version)
        self._parents[model] = parent
        return parent

    def _read_parent(self, model: str, version: str) -> ParentState:
        """``version`` as the parent of a save: its state when its whole chain loads
        (so a delta can be built on it), else a parent that forces a full save."""
        parent = ParentState(version, version, 0, CheckpointState(), {})
        if not self.options.delta:
            return parent
        try:
            state, manifest, index = load_state(self.store, model, version)
        except CheckpointError:
            log.warning(
                "checkpoint cannot be read back; next save is full (model=%s, version=%s)",
                model,
                version,
                exc_info=True,
            )
            return ParentState.broken(version)
        return ParentState(
            version=manifest.version,
            base_version=manifest.base_version or manifest.version,
            chain=int(index.get("chain", 0)),
            state=state,
            index=index,
            files={f.name: f for f in manifest.files},
            base_bytes=int(index.get("base_bytes", 0)),
            chain_bytes=int(index.get("chain_bytes", 0)),
        )

    def _commit(
        self, model: str, snapshot: CheckpointState, meta: dict[str, Any], *, pooled: bool
    ) -> CheckpointManifest:
        """Encode ``snapshot`` against the parent and commit it (saver thread when async)."""
        with self._lock:
            parent = self._parent(model)
            try:
                encoded, manifest = self._encode_and_commit(model, snapshot, meta, parent)
            except CheckpointNotFoundError:
                if parent is None or not parent.files:
                    raise
                # What the parent's chain reuses is gone (GC, quarantine): never build on it.
                log.warning(
                    "checkpoint %s no longer holds what a delta on it needs; saving in full"
                    " (model=%s)",
                    parent.version,
                    model,
                    exc_info=True,
                )
                parent = ParentState.broken(parent.version, parent.state)
                encoded, manifest = self._encode_and_commit(model, snapshot, meta, parent)
            self.last_bytes_written = encoded.bytes_written
            if self.options.delta:
                if parent is not None and pooled:
                    self.pool.give_back(parent.state)
                self._parents[model] = ParentState(
                    version=manifest.version,
                    base_version=encoded.base_version or manifest.version,
                    chain=encoded.chain,
                    state=snapshot,
                    index=encoded.index,
                    files={f.name: f for f in manifest.files},
                    base_bytes=encoded.base_bytes,
                    chain_bytes=encoded.chain_bytes,
                )
            else:
                self._parents[model] = ParentState(
                    manifest.version, manifest.version, 0, CheckpointState(), {}
                )
                if pooled:
                    self.pool.give_back(snapshot)
            return manifest

    def _encode_and_commit(
        self,
        model: str,
        snapshot: CheckpointState,
        meta: dict[str, Any],
        parent: ParentState | None,
    ) -> tuple[EncodedSave, CheckpointManifest]:
        encoded: EncodedSave = encode_save(snapshot, parent=parent, options=self.options)
        draft = ManifestDraft(
            parent_version=parent.version if parent else None,
            rng=snapshot.rng,
            kind=encoded.kind,
            base_version=encoded.base_version,
            variants=encoded.variants,
            file_refs=encoded.file_refs,
            **meta,
        )

        def finish(draft: ManifestDraft, written: Mapping[str, FileEntry]) -> ManifestDraft:
            # The store hashed each file while writing it: the digest reuses those hashes.
            return draft.model_copy(update={"state_digest": encoded.digest(written)})

        return encoded, self.store.commit(model, encoded.files, draft, finish=finish)

    def wait(self) -> None:
        """Block until pending saves are committed; raise an earlier failure if any."""
        if self.saver is not None:
            self.saver.wait()

    def close(self) -> None:
        """Flush pending saves and stop the saver thread."""
        if self.saver is not None:
            self.saver.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- loading -----------------------------------------------------------------------------

    def load(
        self, model: str, version: str | None = None, variant: str | None = None
    ) -> LoadedCheckpoint:
        """Load and verify a checkpoint (``version=None``: the newest committed one).

        ``variant`` ``"int8"`` or ``"ema"`` loads that variant as the
        ``"model"`` group instead of the exact training state.

        Raises
        ------
        CheckpointNotFoundError
            No such checkpoint or variant.
        CheckpointCorruptError
            A file fails verification, or the rebuilt state's digest differs
            from the one recorded at save time.
        """
        if variant is not None:
            state, manifest = load_variant(self.store, model, version, variant)
        else:
            state, manifest, _ = load_state(
                self.store, model, version, verify=self.config.verify_on_load
            )
        return LoadedCheckpoint(state, manifest)

    def restore(
        self, model: str, adapter: StateAdapter, version: str | None = None
    ) -> CheckpointManifest | None:
        """Load the checkpoint into ``adapter``; None (nothing restored) when the store is empty."""
        try:
            loaded = self.load(model, version)
        except CheckpointNotFoundError:
            if version is not None:
                raise
            return None
        adapter.restore(loaded.state)
        return loaded.manifest
