"""The Redis live-version pointer: promote, roll back, canary, shadow."""

from services.pointer.base import (
    PointerError,
    PointerReader,
    PointerState,
    VersionPointer,
    channel_name,
    history_key,
    pointer_key,
    servers_key,
)

__all__ = [
    "PointerError",
    "PointerReader",
    "PointerState",
    "VersionPointer",
    "channel_name",
    "history_key",
    "pointer_key",
    "servers_key",
]
