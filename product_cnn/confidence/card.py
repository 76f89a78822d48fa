"""What a checkpoint carries about its own confidence: the temperature, the held-out photos'
calibrated confidences (any operating point is read off them), the feature bank (with the
training photos' labels and paths: the nearest-photo vote and evidence) and the unknown threshold.
Plain tensors, strings and numbers only, so checkpoints still load with ``weights_only``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from product_cnn.confidence.coverage import threshold_for_accuracy
from product_cnn.confidence.neighbours import EVIDENCE, TAU, K, mix, nearest, neighbour_vote
from product_cnn.confidence.temperature import calibration_error


@dataclass
class Nearest:
    """The nearest training photos of a batch: bank rows, cosine similarities, labels (``(N, n)``)."""

    index: torch.Tensor
    similarity: torch.Tensor
    labels: torch.Tensor
    paths: list[str]

    def rows(self, class_names: list[str]) -> list[list[tuple[int, str, str, float]]]:
        """Per photo: (bank row, category, training photo, similarity) of each, nearest first."""
        return [[(int(j), class_names[int(c)], self.paths[int(j)], round(float(s), 6))
                 for j, s, c in zip(index, sims, labels, strict=True)]
                for index, sims, labels in zip(self.index, self.similarity, self.labels, strict=True)]


@dataclass
class ConfidenceCard:
    """Fitted on held-out photos (``source`` says which) at the end of training."""

    temperature: float
    source: str  # e.g. "validation split (38 photos)" or "training photos, cross-fitted (5 folds, ...)"
    heldout_confidence: torch.Tensor  # calibrated top-1 probability of each held-out photo
    heldout_correct: torch.Tensor  # bool: its top-1 was right
    ece_before: float = float("nan")
    ece_after: float = float("nan")
    bank: torch.Tensor | None = None  # unit-length float16 features of training photos
    unknown_threshold: float | None = None  # similarity below it: "none of these"
    false_unknown: float | None = None  # the held-out share the threshold rejects by design
    bank_labels: torch.Tensor | None = None  # the class index of each bank row
    bank_paths: list[str] | None = None  # the photo of each bank row, as the training data listed it
    vote_share: float = 0.0  # the nearest training photos' vote's weight in the probabilities
    vote_k: int = K
    vote_tau: float = TAU

    @property
    def shows_photos(self) -> bool:
        """Whether the nearest training photos can be named (the bank with labels and paths)."""
        return self.bank is not None and self.bank_labels is not None and bool(self.bank_paths)

    def nearest_photos(self, features: torch.Tensor, n: int = EVIDENCE) -> Nearest:
        """Each photo's ``n`` nearest training photos in the bank."""
        index, sims = nearest(features, self.bank, n)
        return Nearest(index, sims, self.bank_labels[index], self.bank_paths or [])

    @property
    def votes(self) -> bool:
        """Whether the nearest training photos' vote is mixed into the probabilities."""
        return self.vote_share > 0 and self.bank is not None and self.bank_labels is not None

    def mixed(self, probs: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """``probs`` (calibrated, ``(N, C)``) with the vote of the photos' ``features``' nearest
        training photos mixed in (unchanged without a vote)."""
        if not self.votes:
            return probs
        device = features.device
        vote = neighbour_vote(features.float(), self.bank.float().to(device), self.bank_labels.to(device),
                              probs.shape[1], self.vote_k, self.vote_tau)
        return mix(probs, vote, self.vote_share)

    def threshold_for(self, target_accuracy: float) -> tuple[float, float] | None:
        """(confidence threshold, held-out coverage) reaching ``target_accuracy`` on the held-out photos."""
        return threshold_for_accuracy(self.heldout_confidence, self.heldout_correct, target_accuracy)

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": float(self.temperature), "source": self.source,
                "heldout_confidence": self.heldout_confidence.float().cpu(),
                "heldout_correct": self.heldout_correct.bool().cpu(),
                "ece_before": float(self.ece_before), "ece_after": float(self.ece_after),
                "bank": None if self.bank is None else self.bank.half().cpu(),
                "unknown_threshold": self.unknown_threshold, "false_unknown": self.false_unknown,
                "bank_labels": None if self.bank_labels is None else self.bank_labels.long().cpu(),
                "bank_paths": None if self.bank_paths is None else [str(p) for p in self.bank_paths],
                "vote_share": float(self.vote_share), "vote_k": int(self.vote_k),
                "vote_tau": float(self.vote_tau)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ConfidenceCard | None:
        if not data:
            return None
        return cls(float(data["temperature"]), str(data["source"]),
                   torch.as_tensor(data["heldout_confidence"]).float(),
                   torch.as_tensor(data["heldout_correct"]).bool(),
                   float(data.get("ece_before", float("nan"))), float(data.get("ece_after", float("nan"))),
                   data.get("bank"), data.get("unknown_threshold"), data.get("false_unknown"),
                   data.get("bank_labels"), data.get("bank_paths"), float(data.get("vote_share", 0.0)),
                   int(data.get("vote_k", K)), float(data.get("vote_tau", TAU)))

    def summary(self) -> str:
        line = (f"temperature {self.temperature:.3f} fitted on the {self.source}: held-out ECE "
                f"{self.ece_before:.3f} -> {self.ece_after:.3f}")
        if self.unknown_threshold is not None:
            line += f"; unknown below similarity {self.unknown_threshold:.3f}"
        if self.votes:
            line += f"; the {self.vote_k} nearest training photos' vote weighs {self.vote_share:g}"
        return line


def card_from_heldout(temperature: float, source: str, *, raw_probs: torch.Tensor, probs: torch.Tensor,
                      labels: torch.Tensor) -> ConfidenceCard:
    """A card from held-out predictions before (``raw_probs``) and after (``probs``) scaling."""
    labels = torch.as_tensor(labels).long()
    confidence, predicted = probs.max(1)
    return ConfidenceCard(temperature, source, confidence.float(), predicted == labels,
                          calibration_error(raw_probs, labels), calibration_error(probs, labels))
