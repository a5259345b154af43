"""The embedded stack: a Tansu Kafka broker and a Redis as child processes.

Use :class:`EmbeddedStack` (a context manager yielding :class:`StackInfo`);
see :mod:`services.stack.embedded` for how servers are found, started, probed
and stopped, and :mod:`services.stack.process` for why they never outlive
their parent.
"""

from __future__ import annotations

from services.stack.embedded import (
    EMBEDDED_GROUP_TIMEOUTS,
    EmbeddedStack,
    GroupTimeouts,
    StackInfo,
)

__all__ = ["EMBEDDED_GROUP_TIMEOUTS", "EmbeddedStack", "GroupTimeouts", "StackInfo"]
