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
exist is an error rather than an empty store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from schemas.errors import CheckpointNotFoundError, ConfigError
from services.checkpoints.config import StoreConfig
from services.checkpoints.retention import ReferenceSource, RetentionPolicy
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
    root = store.root
    if root.exists() and not root.is_dir():
        raise ConfigError("the checkpoint store root is not a directory", path=str(root))
    if read_only and not root.is_dir():
        raise CheckpointNotFoundError("no checkpoint store here", path=str(root))
    return CheckpointStore(
        store,
        references=references,
        retention=retention_for(store, learning, references),
        read_only=read_only,
    )


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
