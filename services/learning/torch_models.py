"""Torch models over hashed features: linear (logistic) and factorization machine.

Both take the ``EmbeddingBag`` input layout produced by
:meth:`services.learning.hashing.FeatureHasher.encode_batch` —
``(indices, offsets, weights)`` — and return one raw score (a logit for
classification) per example. Tables may use sparse gradients, so an
optimizer step touches only the rows present in the batch (use
``torch.optim.SGD`` or ``torch.optim.Adagrad``, which accept sparse grads).

Both are registered builders (:func:`services.learning.factory.builder`), so
a model config may name them by path. Any torch factory named in a model
config must accept the keyword arguments ``buckets``, ``sparse`` and ``seed``
(the trainer passes them from the ``[encoding]`` table and the model seed)
and implement this ``forward``.
"""

from __future__ import annotations

import torch
from torch import nn

from services.learning.factory import builder


def _bag_sum(values: torch.Tensor, offsets: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Sum ``values`` (one row per index) into ``n_rows`` bags given their start ``offsets``."""
    counts = torch.diff(offsets, append=torch.tensor([values.shape[0]], dtype=offsets.dtype))
    owner = torch.repeat_interleave(torch.arange(n_rows), counts)
    out = torch.zeros((n_rows, *values.shape[1:]), dtype=values.dtype)
    return out.index_add(0, owner, values)


@builder
class HashedLinear(nn.Module):
    """``bias + sum_i w[h(i)] * x_i``: logistic regression under ``bce`` loss.

    Parameters
    ----------
    buckets
        Rows of the weight table (the hash space).
    sparse
        Sparse gradients for the table.
    seed
        Unused (weights start at zero); accepted for a uniform factory signature.
    """

    def __init__(self, buckets: int, sparse: bool = True, seed: int = 0) -> None:
        super().__init__()
        self.weight = nn.EmbeddingBag(buckets, 1, mode="sum", sparse=sparse)
        nn.init.zeros_(self.weight.weight)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(
        self, indices: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        linear: torch.Tensor = self.weight(indices, offsets, per_sample_weights=weights)
        return linear.squeeze(-1) + self.bias


@builder
class HashedFactorizationMachine(nn.Module):
    """Second-order factorization machine over hashed features.

    ``score = bias + sum_i w_i x_i + 1/2 * sum_f [(sum_i v_if x_i)^2 - sum_i v_if^2 x_i^2]``

    Parameters
    ----------
    buckets
        Rows of the linear and factor tables.
    factors
        Latent dimension ``k`` of the pairwise interactions.
    init_std
        Standard deviation of the initial factors (drawn from a generator
        seeded with ``seed``, so two models with the same seed are equal).
    sparse
        Sparse gradients for both tables.
    seed
        Seed of the factor initialisation.
    """

    def __init__(
        self,
        buckets: int,
        factors: int = 8,
        init_std: float = 0.01,
        sparse: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.linear = HashedLinear(buckets, sparse=sparse)
        self.factors = nn.Embedding(buckets, factors, sparse=sparse)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.factors.weight.normal_(0.0, init_std, generator=generator)

    def forward(
        self, indices: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        n = offsets.shape[0]
        v = self.factors(indices) * weights.unsqueeze(-1)  # (nnz, k)
        sum_v = _bag_sum(v, offsets, n)
        sum_v2 = _bag_sum(v * v, offsets, n)
        pairwise = 0.5 * (sum_v * sum_v - sum_v2).sum(dim=-1)
        out: torch.Tensor = self.linear(indices, offsets, weights) + pairwise
        return out
