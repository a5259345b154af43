"""The state layer of the checkpoint store: model state in, named files out, and back.

- :mod:`.state` — :class:`CheckpointState` (tensor groups, JSON documents,
  blobs, RNG states) and the state digest;
- :mod:`.torch_state` / :mod:`.river_state` — adapters capturing and
  restoring torch training loops and river models; :mod:`.rng` the RNGs;
- :mod:`.safe_pickle` — the allow-listed unpickler river blobs load through;
- :mod:`.writer` / :mod:`.reader` / :mod:`.encoding` — files of a checkpoint,
  full or differential (:mod:`.delta`), with the int8 (:mod:`.quantize`) and
  EMA (:mod:`.ema`) variants;
- :mod:`.snapshot` — consistent in-memory snapshots for asynchronous saves.

Users call :class:`services.checkpoints.checkpointer.Checkpointer`.
"""
