"""Online learning: model configuration, adapters, metrics, drift, triggers, trainer.

The package is plain Python with no faust in it; ``streams/trainer.py`` feeds
:class:`pool.TrainerPool` raw records and sends what it returns::

    config.py      ModelConfig / LearningConfig read from TOML (frozen pydantic)
    factory.py     dotted-path factories: admitted classes and registered builders only
    detector_params.py bounds on drift detector parameters
    hashing.py     feature map -> hashed buckets + weights for torch models
    torch_models.py hashed logistic regression and factorization machine
    labels.py      label -> class / target conversion per task
    validation.py  per-example checks before a batch: label and feature values
    adapters.py    ModelAdapter protocol; RiverAdapter, TorchAdapter
    metrics.py     prequential metrics (cumulative and sliding window)
    drift.py       river drift detectors fed the error or the loss
    triggers.py    checkpoint triggers and the adaptive count schedule
    sink.py        CheckpointSink protocol, snapshots, in-memory sink
    trainer.py     OnlineTrainer: dedup, micro-batches, test-then-train
    store_sink.py  CheckpointerSink: snapshots through the checkpoint store
    pool.py        TrainerPool: one worker's trainers, input offsets, outbox
    buildcheck.py  check_buildable: a dry build of a configuration's models
"""

from __future__ import annotations

from services.lazy_modules import defer_river_extras

defer_river_extras()  # before river is imported: what a river model does not use waits
