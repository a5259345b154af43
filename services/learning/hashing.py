"""Feature hashing: a feature map becomes a few (bucket, weight) pairs.

Torch models in driftloop are hashed linear / factorization-machine models:
each feature picks one row of an embedding table, so an update touches only
the rows of the features present. The hash is a keyed BLAKE2b (stable across
processes and Python versions, unlike ``hash()``), so a replay and a restart
pick the same rows.

Encoding of one feature ``name: value``:

- number: row ``hash(name)``, weight ``float(value)``;
- bool: row ``hash(name)``, weight ``1.0`` or ``0.0``;
- string: row ``hash(name + "=" + value)``, weight ``1.0``.

Features with weight 0 are dropped.

Examples
--------
>>> h = FeatureHasher(buckets=1024, seed=0)
>>> rows, weights = h.encode({"age": 31.0, "country": "fr", "vip": True})
>>> len(rows), weights
(3, [31.0, 1.0, 1.0])
>>> h.encode({"age": 31.0}) == FeatureHasher(buckets=1024, seed=0).encode({"age": 31.0})
True
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
else:
    from services.lazy_torch import torch  # imported at first use (river-only workers never)


FeatureValue = bool | int | float | str

_CACHE_LIMIT = 1 << 20


class FeatureHasher:
    """Maps feature maps to bucket indices and weights for ``EmbeddingBag``-style models.

    Parameters
    ----------
    buckets
        Number of rows in the model's tables; indices are in ``[0, buckets)``.
    seed
        Hash key: different seeds give independent hash functions.
    """

    def __init__(self, buckets: int, seed: int = 0) -> None:
        self.buckets = buckets
        self._key = seed.to_bytes(8, "little")
        self._cache: dict[str, int] = {}

    def bucket(self, token: str) -> int:
        """Row index for one token (``name`` or ``name=value``)."""
        row = self._cache.get(token)
        if row is None:
            digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8, key=self._key).digest()
            row = int.from_bytes(digest, "little") % self.buckets
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[token] = row
        return row

    def encode(self, features: Mapping[str, FeatureValue]) -> tuple[list[int], list[float]]:
        """Rows and weights of one feature map, in sorted feature-name order."""
        rows: list[int] = []
        weights: list[float] = []
        for name in sorted(features):
            value = features[name]
            if isinstance(value, str):
                token, weight = f"{name}={value}", 1.0
            else:
                token, weight = name, float(value)
            if weight == 0.0:
                continue
            rows.append(self.bucket(token))
            weights.append(weight)
        return rows, weights

    def encode_batch(
        self, batch: Sequence[Mapping[str, FeatureValue]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(indices, offsets, weights)`` for a batch, the ``EmbeddingBag`` input layout."""
        indices: list[int] = []
        weights: list[float] = []
        offsets: list[int] = []
        for features in batch:
            offsets.append(len(indices))
            rows, ws = self.encode(features)
            indices.extend(rows)
            weights.extend(ws)
        return (
            torch.tensor(indices, dtype=torch.long),
            torch.tensor(offsets, dtype=torch.long),
            torch.tensor(weights, dtype=torch.float32),
        )
