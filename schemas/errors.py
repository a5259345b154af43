"""The one exception tree of driftloop.

Every error driftloop raises on purpose derives from :class:`DriftloopError`
and carries the context needed to act on it (model, version, topic,
partition, offset, path) in attributes, not only in its message::

    DriftloopError
    ├── ConfigError            settings that cannot work (bad URL, missing binary)
    ├── SchemaError            an event or manifest that does not validate
    ├── StackError             an embedded server that would not start or answer
    ├── BrokerError            a Kafka cluster that did not answer or refused a request
    ├── LearnError             a model failed to learn a batch (and was put back as it was)
    └── CheckpointError        anything about stored model state
        ├── CheckpointNotFoundError
        ├── CheckpointCorruptError   a file whose hash or size does not match
        │   ├── CheckpointSignatureError  a manifest unsigned, signed by an unknown
        │   │                             key, wrongly signed, or not the one opened
        │   └── UnsafePickleError    a pickle that the restricted loader refused
        └── NoLoadableCheckpointError  checkpoints exist, none of them loads

:data:`SHUTDOWN_EXCEPTIONS` are the ``BaseException`` s that mean "stop": code
that contains failures of model code (which may raise any ``BaseException``,
e.g. a pyo3 ``PanicException``) re-raises these and handles everything else.

The tree lives in ``schemas`` because it is the lowest layer: ``services`` and
``streams`` both import it, and it imports nothing of theirs.
"""

from __future__ import annotations

import asyncio
from typing import Any

#: BaseExceptions that stop the process or task; never swallowed with model failures.
SHUTDOWN_EXCEPTIONS: tuple[type[BaseException], ...] = (
    KeyboardInterrupt,
    SystemExit,
    GeneratorExit,
    asyncio.CancelledError,
)


class DriftloopError(Exception):
    """Root of every error driftloop raises on purpose.

    ``context`` holds the identifying facts (model, version, topic, partition,
    offset, path, ...); they are appended to the message so a log line alone
    says where the problem is.
    """

    def __init__(self, message: str, **context: Any) -> None:
        self.message = message
        self.context: dict[str, Any] = {k: v for k, v in context.items() if v is not None}
        super().__init__(message)

    def __str__(self) -> str:
        if not self.context:
            return self.message
        facts = ", ".join(f"{k}={v}" for k, v in self.context.items())
        return f"{self.message} ({facts})"


class ConfigError(DriftloopError):
    """Settings that cannot work: a malformed URL, a missing server binary."""


class SchemaError(DriftloopError):
    """An event or manifest that does not decode or validate.

    ``field`` is the dotted path of the first offending field (``""`` when the
    payload as a whole is wrong, e.g. not JSON), ``reason`` says what is wrong.
    """

    def __init__(self, reason: str, *, field: str = "", **context: Any) -> None:
        self.field = field
        self.reason = reason
        where = f"{field}: " if field else ""
        # The field leads the message, so it is not repeated among the context facts.
        super().__init__(f"{where}{reason}", **context)


class StackError(DriftloopError):
    """An embedded server that would not start, or did not answer in time."""


class BrokerError(DriftloopError):
    """A Kafka cluster that did not answer in time or refused a request."""


class LearnError(DriftloopError):
    """Learning a batch failed on one example; the model was put back as it was
    before the batch. ``index`` is the example's position in the batch."""

    def __init__(self, reason: str, *, index: int, **context: Any) -> None:
        self.index = index
        self.reason = reason
        super().__init__(reason, index=index, **context)


class CheckpointError(DriftloopError):
    """Anything about stored model state."""


class CheckpointNotFoundError(CheckpointError):
    """No committed checkpoint with that model and version."""


class CheckpointCorruptError(CheckpointError):
    """A checkpoint file whose size or sha256 differs from its manifest."""


class UnsafePickleError(CheckpointCorruptError):
    """A pickle the restricted loader refused (a global outside the allow-list, a
    broken bound, malformed bytes, any failure while loading); a damaged checkpoint."""


class CheckpointSignatureError(CheckpointCorruptError):
    """A manifest no trusted key vouches for; none of its state files was read.

    ``reason`` is one of :data:`SIGNATURE_REASONS`: ``unsigned`` (written before
    signing, or stripped; ``driftloop checkpoints sign --adopt`` signs it),
    ``unknown_key`` (signed by a key not among the trusted ones),
    ``bad_signature`` (the manifest changed after it was signed, or the
    signature is forged), ``wrong_checkpoint`` (the manifest names another
    model or version than the path it was read from). It is a
    :class:`CheckpointCorruptError`, so whoever falls back from an unloadable
    checkpoint falls back from this one too. Context: model, version, path,
    key_id.
    """

    def __init__(self, message: str, *, reason: str, **context: Any) -> None:
        self.reason = reason
        super().__init__(message, reason=reason, **context)


#: The values of :attr:`CheckpointSignatureError.reason`.
SIGNATURE_REASONS = ("unsigned", "unknown_key", "bad_signature", "wrong_checkpoint")


class NoLoadableCheckpointError(CheckpointError):
    """A model has checkpoints but none of them loads completely.

    ``failures`` maps each version tried (newest first) to why it did not
    load. Training from scratch would silently discard learned state, so the
    worker exits (code 2) unless started with ``--from-scratch``.
    """

    def __init__(self, model: str, failures: dict[str, str]) -> None:
        self.model = model
        self.failures = dict(failures)
        listed = "; ".join(f"{v}: {why}" for v, why in self.failures.items())
        super().__init__(
            f"model {model}: no checkpoint loads ({listed}); fix or restore the store,"
            " or start the worker with --from-scratch to train this model from step 0",
            model=model,
        )
