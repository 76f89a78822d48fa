"""The nearest training photos as evidence: a similarity-weighted vote of the ``k`` training photos
most like a photo (the checkpoint's feature bank and their labels), mixed into the head's
probabilities with weight ``share``. The mixture is what every runtime returns (the Predictor,
the test report, serving, exports); the card's held-out confidences are the mixture's, so its
operating points hold for it. Measured on slash5: docs/confidence.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

K = 10  # neighbours that vote
TAU = 0.05  # softmax temperature over their cosine similarities: the nearest count most
EVIDENCE = 3  # nearest training photos shown beside a prediction


def neighbour_vote(features: torch.Tensor, bank: torch.Tensor, labels: torch.Tensor, num_classes: int,
                   k: int = K, tau: float = TAU) -> torch.Tensor:
    """``(N, num_classes)`` probabilities: each photo's ``k`` most similar ``bank`` rows (unit
    length) vote for their ``labels``, weighted by the softmax of cosine similarity / ``tau``
    (traceable: the exports compute it too)."""
    onehot = F.one_hot(labels.long(), num_classes).to(features.dtype)
    top = (F.normalize(features, dim=1) @ bank.to(features.dtype).T).topk(max(1, min(k, len(bank))), dim=1)
    weights = torch.softmax(top.values / tau, dim=1)
    return (weights.unsqueeze(-1) * onehot[top.indices]).sum(1)


def mix(probs: torch.Tensor, vote: torch.Tensor, share: float) -> torch.Tensor:
    """``(1 - share) * probs + share * vote``: still a probability distribution per row."""
    return probs if share == 0 else (1 - share) * probs + share * vote.to(probs.dtype)


def nearest(features: torch.Tensor, bank: torch.Tensor, n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices into ``bank``, cosine similarities) of each photo's ``n`` nearest bank rows."""
    top = (F.normalize(features.float(), dim=1) @ bank.float().T).topk(max(1, min(n, len(bank))), dim=1)
    return top.indices, top.values
