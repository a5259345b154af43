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
        └── CheckpointCorruptError   a file whose hash or size does not match
            └── UnsafePickleError    a pickle that the restricted loader refused

The tree lives in ``schemas`` because it is the lowest layer: ``services`` and
``streams`` both import it, and it imports nothing of theirs.
"""

from __future__ import annotations

from typing import Any


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
