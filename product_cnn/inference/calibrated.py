"""A network with its fitted temperature: logits divided by it, so that every softmax downstream
(predict, ensembles, serving, exported models) gives the calibrated probabilities; and with the
card's nearest-photo vote mixed in, when the checkpoint has one."""

from __future__ import annotations

import torch
from torch import nn

from product_cnn.confidence.card import ConfidenceCard
from product_cnn.confidence.neighbours import mix, neighbour_vote
from product_cnn.models.penultimate import Penultimate


class TemperatureScaled(nn.Module):
    """``net(x) / temperature``: the same ranking of classes, calibrated probabilities."""

    def __init__(self, net: nn.Module, temperature: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature {temperature} must be > 0")
        self.net = net
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        return logits if self.temperature == 1.0 else logits / self.temperature


class NeighbourMixed(nn.Module):
    """``log`` of ``net``'s probabilities with ``card``'s nearest-training-photo vote mixed in (its
    softmax is the mixture); the vote in fp32 whatever the autocast."""

    def __init__(self, net: nn.Module, card: ConfidenceCard) -> None:
        super().__init__()
        if not card.votes:
            raise ValueError("the card has no nearest-photo vote")
        self.net = net
        self.share, self.k, self.tau = float(card.vote_share), int(card.vote_k), float(card.vote_tau)
        self.register_buffer("bank", card.bank.float())
        self.register_buffer("labels", card.bank_labels.long())
        self._features = Penultimate(net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self._features as grab:
            logits = self.net(x)
            features = grab.take()
        with torch.autocast(x.device.type, enabled=False):
            probs = torch.softmax(logits.float(), dim=1)
            vote = neighbour_vote(features.float(), self.bank, self.labels, probs.shape[1], self.k, self.tau)
            return mix(probs, vote, self.share).clamp_min(1e-12).log()
