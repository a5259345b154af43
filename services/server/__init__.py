"""The model server (``driftloop serve``): FastAPI over hot-swappable, verified versions.

One module per concern:

- :mod:`.app` — the HTTP API (app factory over an injected :class:`~.app.ServerContext`);
- :mod:`.schemas` — request and response bodies;
- :mod:`.limits` — the request body size limit (ASGI middleware);
- :mod:`.routing` — canary and holdout shares by a salted BLAKE2b hash of ``request_id``;
- :mod:`.registry` — resident versions (K, least recently used out) and the
  frozen :class:`~.registry.Serving` snapshot swapped by one assignment;
- :mod:`.loader` — every call into the checkpoint store (read-only, verified);
- :mod:`.follower` — following the pointer: channel hints plus an epoch poll;
- :mod:`.redis_pointer` — the Redis side: pointer reader, hints, epoch reports;
- :mod:`.metrics` — Prometheus metrics, one registry per app;
- :mod:`.config` — ``DRIFTLOOP_SERVER_*``;
- :mod:`.wiring` — building the real thing from settings (store, Redis, publisher).
"""
