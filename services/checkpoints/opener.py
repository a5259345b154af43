"""The one way every process opens the checkpoint store.

The worker, each ``driftloop checkpoints`` command, and the model servers and
gateway to come call :func:`open_store` with the store settings and the model
configuration, so they apply the same retention to the same store and cannot
disagree on what GC keeps: each model's ``[model.retention]`` table (see
:func:`services.learning.retention.build_retention`), the store's
``DRIFTLOOP_STORE_*`` retention for models without one.

Why here, and why the learning layer is imported inside the function: the
storage layer (``services.checkpoints``) knows nothing about model code, and
``services.learning`` builds on it (its retention module imports this
package's policies and catalog). Importing it at module level would make every
reader of the store load the model layer (factories, river, torch) just to list
checkpoints, and would tie the two packages into an import cycle as soon as
the package re-exported the opener. So the model configuration is only a type
here, and :mod:`services.learning.retention` is imported when a configuration
is actually given.

A store opened ``read_only`` creates, migrates and repairs nothing (see
:class:`~services.checkpoints.store.CheckpointStore`); one that does not
exist is an error rather than an empty store. A process that only ever
reads state — a model server, a CLI check before a version goes live — calls
:func:`open_reader` instead: a bare
:class:`~services.checkpoints.reader.CheckpointReader` over the tiers, with
no catalog at all (not even in memory) and every write refused by the tiers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from schemas.errors import CheckpointNotFoundError, ConfigError
from services.checkpoints.config import StoreConfig
from services.checkpoints.reader import CheckpointReader
from services.checkpoints.readonly import ReadOnlyStorage
from services.checkpoints.retention import ReferenceSource, RetentionPolicy
from services.checkpoints.signing import signer_from_config, trusted_from_config
from services.checkpoints.storage import CheckpointStorage, open_tiers
from services.checkpoints.store import CheckpointStore

if TYPE_CHECKING:
    from services.learning.config import LearningConfig


def open_store(
    store: StoreConfig,
    learning: LearningConfig | None,
    *,
    read_only: bool = False,
    references: ReferenceSource | None = None,
) -> CheckpointStore:
    """Open the checkpoint store described by ``store`` for a process.

    Parameters
    ----------
    store
        The store settings (``DRIFTLOOP_STORE_*``, ``--store``).
    learning
        The model configuration the process runs with: each model it declares
        keeps what its retention table says. None when the process has none;
        then the store's own retention applies, and commands that delete or
        move checkpoints must refuse (``driftloop checkpoints gc`` does).
    read_only
        Open for reading only: nothing is created or written, and a store
        that does not exist raises instead of being created.
    references
        The versions the version pointer references, kept whatever the
        policies say.

    Raises
    ------
    ConfigError
        The store root exists but is not a directory, or a retention table is wrong.
    CheckpointNotFoundError
        ``read_only`` and there is no store at the root.
    """
    _check_root(store, read_only=read_only)
    return CheckpointStore(
        store,
        references=references,
        retention=retention_for(store, learning, references),
        read_only=read_only,
    )


def open_reader(
    store: StoreConfig,
    *,
    hot: CheckpointStorage | None = None,
    cold: CheckpointStorage | None = None,
) -> CheckpointReader:
    """Open the checkpoint store described by ``store`` for reading only.

    The reader lists versions, verifies them and loads their state (see
    :class:`~services.checkpoints.reader.CheckpointReader`) straight from
    the manifests: it opens no catalog, creates no directory or file, and
    its tiers (wrapped in :class:`~services.checkpoints.readonly.ReadOnlyStorage`)
    refuse every write, so several replicas can share one store. Trusted
    keys are ``store.trusted_keys`` plus the public key of the signing key,
    if one is configured.

    Parameters
    ----------
    store
        The store settings (``DRIFTLOOP_STORE_*``).
    hot, cold
        Storage to read instead of ``store.root`` / ``store.cold_url``
        (unit tests pass a :class:`~services.checkpoints.memory_storage.MemoryStorage`).

    Raises
    ------
    ConfigError
        The store root is not a directory, a key or the cold tier cannot be opened.
    CheckpointNotFoundError
        There is no store at the root.
    """
    if hot is None:
        _check_root(store, read_only=True)
    if hot is None or (cold is None and store.cold_url):
        default_hot, default_cold = open_tiers(store)
        hot = hot if hot is not None else default_hot
        cold = cold if cold is not None else default_cold
    signer = signer_from_config(store)
    return CheckpointReader(
        ReadOnlyStorage(hot),
        ReadOnlyStorage(cold) if cold is not None else None,
        trusted=trusted_from_config(store, signer),
    )


def _check_root(store: StoreConfig, *, read_only: bool) -> None:
    root = store.root
    if root.exists() and not root.is_dir():
        raise ConfigError("the checkpoint store root is not a directory", path=str(root))
    if read_only and not root.is_dir():
        raise CheckpointNotFoundError("no checkpoint store here", path=str(root))


def retention_for(
    store: StoreConfig,
    learning: LearningConfig | None,
    references: ReferenceSource | None = None,
) -> RetentionPolicy | None:
    """The retention :func:`open_store` gives the store (None: the store's defaults)."""
    if learning is None:
        return None
    from services.learning.retention import build_retention

    return build_retention(learning, store, references)
