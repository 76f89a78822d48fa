"""Which predictions a shop files automatically: "unsure" under a confidence threshold (given, or
read off the held-out photos for a target accuracy), "unknown" under the similarity threshold."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from product_cnn.errors import ProductCNNError

if TYPE_CHECKING:  # only its methods are called: a gate without a card needs no torch
    from product_cnn.confidence.card import ConfidenceCard

UNSURE, UNKNOWN = "unsure", "unknown"


@dataclass
class Gate:
    """The thresholds in force: ``min_confidence`` (calibrated top-1) and ``unknown_threshold``."""

    min_confidence: float | None = None
    unknown_threshold: float | None = None
    target_accuracy: float | None = None  # what min_confidence was chosen for, if it was

    @property
    def active(self) -> bool:
        return self.min_confidence is not None or self.unknown_threshold is not None

    def verdict(self, confidence: float, similarity: float | None) -> str | None:
        """``unknown``, ``unsure`` or None (file it)."""
        limit = self.unknown_threshold
        if limit is not None and similarity is not None and similarity < limit:
            return UNKNOWN
        if self.min_confidence is not None and confidence < self.min_confidence:
            return UNSURE
        return None

    def describe(self) -> str:
        parts = []
        if self.min_confidence is not None:
            target = self.target_accuracy
            why = f" (target accuracy {target:g} on held-out photos)" if target else ""
            parts.append(f"unsure below confidence {self.min_confidence:.3f}{why}")
        if self.unknown_threshold is not None:
            parts.append(f"unknown below similarity {self.unknown_threshold:.3f}")
        return "; ".join(parts) or "every photo filed (no threshold)"


@dataclass(frozen=True)
class GateOptions:
    """What a user asks of the gate (predict.py, serve.py): ``min_confidence`` or ``target_accuracy``
    (exclusive), and whether "none of these" answers (``unknown``)."""

    min_confidence: float | None = None
    target_accuracy: float | None = None
    unknown: bool = True

    @classmethod
    def from_config(cls, cfg: Any) -> GateOptions:
        """The three options of a predict/serve config (absent ones at their defaults)."""
        return cls(cfg.get("min_confidence"), cfg.get("target_accuracy"), bool(cfg.get("unknown", True)))

    def build(self, cards: Sequence[ConfidenceCard | None], *, unknown: bool = True) -> Gate:
        """The gate for these cards (:func:`build_gate`); ``unknown=False`` where the runtime has no
        features to compare."""
        return build_gate(cards, self.min_confidence, self.target_accuracy, self.unknown and unknown)


def build_gate(cards: Sequence[ConfidenceCard | None], min_confidence: float | None = None,
               target_accuracy: float | None = None, unknown: bool = True) -> Gate:
    """The gate for a checkpoint (or the members of an ensemble); one-line errors for what cannot be met.

    ``target_accuracy`` takes the strictest of the members' held-out thresholds; ``unknown`` is on
    when every member carries a feature bank (their mean similarity against their mean threshold).
    """
    if min_confidence is not None and target_accuracy is not None:
        raise ProductCNNError("min_confidence and target_accuracy exclude each other: give one")
    if min_confidence is not None and not 0 <= min_confidence <= 1:
        raise ProductCNNError(f"min_confidence={min_confidence} must be between 0 and 1")
    gate = Gate(min_confidence=min_confidence)
    if target_accuracy is not None:
        if not 0 < target_accuracy <= 1:
            raise ProductCNNError(f"target_accuracy={target_accuracy} must be in (0, 1]")
        if any(c is None for c in cards):
            raise ProductCNNError("target_accuracy needs a calibrated checkpoint (trained with validation "
                                  "photos, or a preset): give min_confidence= instead, or retrain")
        found = [c.threshold_for(target_accuracy) for c in cards]
        if any(f is None for f in found):
            best = max(float(c.heldout_correct.float().mean()) for c in cards)
            raise ProductCNNError(f"target_accuracy={target_accuracy:g} is reached at no confidence on the "
                                  f"held-out photos (overall {best:.3f}): ask for less, or min_confidence=")
        gate.min_confidence = max(f[0] for f in found)
        gate.target_accuracy = target_accuracy
    if unknown and cards and all(c is not None and c.unknown_threshold is not None for c in cards):
        gate.unknown_threshold = sum(c.unknown_threshold for c in cards) / len(cards)
    return gate
