""""None of these": how much a photo looks like any training photo.

The score is the mean cosine similarity of the photo's pooled features (the input of the network's
classifier layer) to its ``K`` most similar training photos (the feature bank stored with the
checkpoint); the mean of ten separated slash5 from outside photos better than the largest one
(docs/confidence.md).
A street, a screenshot or a blank image is far from every product photo; the threshold is a low
quantile of the scores of held-out product photos, so that only that share of them is rejected.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BANK_SIZE = 4096  # at most this many training photos are kept (a random, seeded subset)
K = 10  # neighbours averaged


def bank_rows(count: int, size: int = BANK_SIZE, seed: int = 0) -> torch.Tensor:
    """The rows of ``count`` training photos the bank keeps: all, or a seeded random ``size`` of them."""
    if count <= size:
        return torch.arange(count)
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:size].sort().values


def feature_bank(features: torch.Tensor, size: int = BANK_SIZE, seed: int = 0) -> torch.Tensor:
    """Unit-length float16 rows of ``features`` (the :func:`bank_rows` subset when there are more
    than ``size``)."""
    features = torch.as_tensor(features).float()
    return F.normalize(features[bank_rows(len(features), size, seed)], dim=1).half()


def similarity(features: torch.Tensor, bank: torch.Tensor, k: int = K, chunk: int = 1024) -> torch.Tensor:
    """For each row of ``features``: the mean of its ``k`` largest cosine similarities to rows of ``bank``."""
    features = torch.as_tensor(features).float()
    bank = bank.float()
    k = max(1, min(k, len(bank)))
    out = [nearest_mean(features[i:i + chunk], bank, k) for i in range(0, len(features), chunk)]
    return torch.cat(out) if out else torch.empty(0)


def nearest_mean(features: torch.Tensor, bank: torch.Tensor, k: int = K) -> torch.Tensor:
    """:func:`similarity` of one block of rows against a float ``bank`` with ``1 <= k <= len(bank)``
    (traceable: what exports compute)."""
    return (F.normalize(features, dim=1) @ bank.T).topk(k, dim=1).values.mean(1)


def unknown_threshold(heldout_scores: torch.Tensor, false_unknown: float) -> float:
    """The score under which a photo is called unknown: the ``false_unknown`` quantile of held-out
    product photos' scores (that share of them would be rejected)."""
    scores = torch.as_tensor(heldout_scores).double()
    if len(scores) == 0:
        raise ValueError("no held-out photos to set the unknown threshold on")
    return float(torch.quantile(scores, false_unknown))
