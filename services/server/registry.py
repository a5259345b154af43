"""The versions one model server has loaded, and the one it serves from.

:class:`Serving` is a frozen snapshot: the pointer epoch it applies and the
loaded live, canary and shadow versions. :class:`ModelRegistry.serving` is the
only mutable thing a request reads, and it reads it once: every version is
loaded, verified and warmed (one prediction) *before* the new snapshot is
built, and the swap is one reference assignment, so a request sees the old
snapshot or the new one, never a mix.

A pointer change is applied whole or not at all: if any version it names
fails to load or to warm, the old snapshot keeps serving, the failure is kept
in :attr:`ModelRegistry.last_error` (shown by ``GET /v1/models/{model}``) and
counted. An epoch lower than or equal to the applied one is never applied.

Residency: the versions of the current snapshot plus the most recently used
others, up to ``resident`` (K) versions, stay loaded, so a rollback to the
previous live version is a switch. Memory: K times one model's parameters
(river: the pickled model's objects; torch: the module's tensors; no
optimizer state), e.g. 9 MiB per ``torch_fm`` example version
(262,144 buckets x (8 factors + 1) float32) and about 1.5 KiB for ``river_logreg``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from services.learning.adapters import ModelAdapter
from services.pointer.base import PointerState
from services.server.loader import VersionLoader

log = logging.getLogger(__name__)

#: What a warm-up predicts: no features (every shipped model accepts it).
WARMUP_FEATURES: dict[str, float] = {}


@dataclass(frozen=True)
class Resident:
    """One loaded, verified and warmed version."""

    version: str
    adapter: ModelAdapter


@dataclass(frozen=True)
class Serving:
    """What serves one model, as of pointer epoch ``epoch``."""

    model: str
    epoch: int
    live: Resident | None
    canary: Resident | None
    canary_percent: float
    shadow: Resident | None
    #: When this snapshot was swapped in, epoch milliseconds (the status shows it,
    #: so convergence can be split into "told and applied" and "answered").
    applied_ms: int = 0

    def versions(self) -> tuple[str, ...]:
        """The versions this snapshot serves from."""
        named = (self.live, self.canary, self.shadow)
        return tuple(dict.fromkeys(r.version for r in named if r is not None))


@dataclass(frozen=True)
class LoadFailure:
    """A pointer change that could not be applied."""

    epoch: int
    version: str
    error: str
    ts: int


class ModelRegistry:
    """Resident versions of one model and the snapshot it serves from.

    Parameters
    ----------
    model
        The model's name.
    loader
        Loads one version (verified) into an inference-only adapter.
    resident
        K: versions kept loaded (at least those the pointer names).
    on_failure
        Called with each :class:`LoadFailure` (metrics).
    """

    def __init__(
        self,
        model: str,
        loader: VersionLoader,
        *,
        resident: int = 4,
        on_failure: Callable[[LoadFailure], None] | None = None,
    ) -> None:
        self.model = model
        self.loader = loader
        self.resident_limit = max(1, resident)
        self.on_failure = on_failure
        #: The snapshot requests read (once per request); None until a pointer applied.
        self.serving: Serving | None = None
        #: The last failed pointer change (None once a later one applied).
        self.last_error: LoadFailure | None = None
        self._resident: OrderedDict[str, Resident] = OrderedDict()
        #: Held for a whole apply (loads included): one change at a time.
        self._apply_lock = threading.Lock()
        #: Held only to touch ``_resident``: status reads never wait for a load.
        self._lru_lock = threading.Lock()

    @property
    def epoch(self) -> int | None:
        """The pointer epoch applied, or None before the first."""
        serving = self.serving
        return None if serving is None else serving.epoch

    def resident_versions(self) -> list[str]:
        """Loaded versions, least recently used first."""
        with self._lru_lock:
            return list(self._resident)

    def apply(self, state: PointerState) -> bool:
        """Load what ``state`` names and swap it in; False when nothing changed.

        Nothing changes for an epoch at or below the applied one, nor when a
        version fails to load (then :attr:`last_error` says why). Raises nothing.
        """
        with self._apply_lock:
            current = self.serving
            if current is not None and state.epoch <= current.epoch:
                if state.epoch < current.epoch:
                    log.warning(
                        "model %s: pointer epoch %d is below the applied %d; ignored",
                        self.model,
                        state.epoch,
                        current.epoch,
                    )
                return False
            loaded: dict[str, Resident] = {}
            for version in state.versions():
                resident = self._get_or_load(version, state.epoch)
                if resident is None:
                    self._trim(set(current.versions()) if current is not None else set())
                    return False
                loaded[version] = resident
            serving = Serving(
                model=self.model,
                epoch=state.epoch,
                live=loaded.get(state.live) if state.live else None,
                canary=loaded.get(state.canary) if state.canary else None,
                canary_percent=state.canary_percent if state.canary else 0.0,
                shadow=loaded.get(state.shadow) if state.shadow else None,
                applied_ms=time.time_ns() // 1_000_000,
            )
            self.serving = serving  # the swap: one reference assignment
            self.last_error = None
            self._trim(set(loaded))
            log.info(
                "model %s: applied epoch %d (live=%s canary=%s@%s%% shadow=%s)",
                self.model,
                state.epoch,
                state.live,
                state.canary,
                state.canary_percent,
                state.shadow,
            )
            return True

    def _get_or_load(self, version: str, epoch: int) -> Resident | None:
        with self._lru_lock:
            found = self._resident.get(version)
            if found is not None:
                self._resident.move_to_end(version)
                return found
        try:
            adapter = self.loader.load(self.model, version)
            adapter.predict_many([WARMUP_FEATURES])  # warm: one prediction before any request
        except Exception as exc:  # noqa: BLE001 - any failure of a load keeps the old version serving; it is reported, never raised into the follower
            failure = LoadFailure(
                epoch=epoch,
                version=version,
                error=f"{type(exc).__name__}: {exc}",
                ts=time.time_ns() // 1_000_000,
            )
            self.last_error = failure
            log.error(
                "model %s: cannot load version %s for epoch %d; the current one keeps serving: %s",
                self.model,
                version,
                epoch,
                failure.error,
            )
            if self.on_failure is not None:
                self.on_failure(failure)
            return None
        resident = Resident(version, adapter)
        with self._lru_lock:
            self._resident[version] = resident
        return resident

    def _trim(self, keep: set[str]) -> None:
        """Evict least recently used versions beyond K, never one in ``keep``."""
        with self._lru_lock:
            for version in list(self._resident):
                if len(self._resident) <= self.resident_limit:
                    break
                if version not in keep:
                    del self._resident[version]
