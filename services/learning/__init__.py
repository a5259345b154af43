"""Online learning: model configuration, adapters, metrics, drift, triggers, trainer.

The package is plain Python with no Kafka in it; ``streams/trainer.py`` feeds
it records and wires its checkpoint sink to the checkpoint store::

    config.py      ModelConfig / LearningConfig read from TOML (frozen pydantic)
    factory.py     safe dotted-path factories (allow-listed module prefixes)
    hashing.py     feature map -> hashed buckets + weights for torch models
    torch_models.py hashed logistic regression and factorization machine
    labels.py      label -> class / target conversion per task
    adapters.py    ModelAdapter protocol; RiverAdapter, TorchAdapter
    metrics.py     prequential metrics (cumulative and sliding window)
    drift.py       river drift detectors fed the error or the loss
    triggers.py    checkpoint triggers and the adaptive count schedule
    sink.py        CheckpointSink protocol, snapshots, in-memory sink
    trainer.py     OnlineTrainer: dedup, micro-batches, test-then-train
"""

from __future__ import annotations
