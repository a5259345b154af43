"""The Redis live-version pointer: promote, roll back, canary, shadow.

``base`` (the seam, key names, errors), ``transitions`` (the rules, pure),
``writer`` (the changes every implementation shares), ``redis`` and
``memory`` (the two implementations), ``relay`` (outbox -> ``version-events``),
``log`` and ``restore`` (reading the topic back), ``validation`` (which
versions may serve), ``factory`` (pointers from settings).
"""

from services.pointer.base import (
    PointerError,
    PointerLostError,
    PointerReader,
    PointerState,
    PointerUnavailableError,
    StaleEpochError,
    VersionCheck,
    VersionLog,
    VersionPointer,
    VersionRefusedError,
    channel_name,
    history_key,
    outbox_key,
    pointer_key,
    servers_key,
)

__all__ = [
    "PointerError",
    "PointerLostError",
    "PointerReader",
    "PointerState",
    "PointerUnavailableError",
    "StaleEpochError",
    "VersionCheck",
    "VersionLog",
    "VersionPointer",
    "VersionRefusedError",
    "channel_name",
    "history_key",
    "outbox_key",
    "pointer_key",
    "servers_key",
]
