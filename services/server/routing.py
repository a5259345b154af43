"""Which version answers a request: a stable, salted hash of its ``request_id``.

A request's bucket is

    digest = blake2b(salt + b"\\x00" + request_id, digest_size=8)
    bucket(salt, request_id) = int.from_bytes(digest, "big") % 10000

with ``blake2b`` from :mod:`hashlib` (unkeyed, ``digest_size=8``), the salt
and the request id encoded as UTF-8. A request is in a share of ``percent``
when ``bucket < round(percent * 100)``, so shares have a resolution of 0.01 %.
The hash is the same in every process, on every machine and Python version
(unlike ``hash()``), so every replica routes a request the same way and the
same request always gets the same version.

Each purpose has its own salt (:data:`CANARY_SALT`, :data:`HOLDOUT_SALT`):
the buckets of one purpose say nothing about the other's, so the canary share
and the validation gateway's holdout share are independent (a 10 % canary and
a 10 % holdout overlap on about 1 % of requests, not on the same 10 %).

Examples
--------
>>> bucket(CANARY_SALT, "req-1") == bucket(CANARY_SALT, "req-1")
True
>>> in_share(CANARY_SALT, "req-1", 0.0), in_share(CANARY_SALT, "req-1", 100.0)
(False, True)
"""

from __future__ import annotations

import hashlib
from typing import Final

#: Buckets per purpose: shares have a resolution of 1 / BUCKETS (0.01 %).
BUCKETS: Final[int] = 10_000
#: Salt of the canary share (model servers).
CANARY_SALT: Final[str] = "canary"
#: Salt of the holdout share (validation gateway).
HOLDOUT_SALT: Final[str] = "holdout"


def bucket(salt: str, request_id: str) -> int:
    """The request's bucket in ``[0, BUCKETS)`` for the purpose named by ``salt``."""
    material = salt.encode("utf-8") + b"\x00" + request_id.encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(material, digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def in_share(salt: str, request_id: str, percent: float) -> bool:
    """True when the request falls in a ``percent`` share (0-100) of the ``salt`` purpose.

    Below 0 (or NaN) is no request, 100 and above every request.
    """
    if not percent > 0:
        return False
    if percent >= 100:
        return True
    return bucket(salt, request_id) < round(percent * BUCKETS / 100)


def routes_to_canary(request_id: str, canary_percent: float) -> bool:
    """True when a request goes to the canary version at ``canary_percent``."""
    return in_share(CANARY_SALT, request_id, canary_percent)


def in_holdout(request_id: str, holdout_percent: float) -> bool:
    """True when a request is in the gateway's holdout share at ``holdout_percent``."""
    return in_share(HOLDOUT_SALT, request_id, holdout_percent)
