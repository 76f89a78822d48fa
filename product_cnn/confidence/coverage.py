"""The accuracy-coverage curve: for a confidence threshold, the share of photos at or above it
(filed automatically) and their accuracy; and the threshold that reaches a target accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import torch

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99)
TARGETS = (0.98, 0.95)  # the operating points every report states


def coverage_table(confidence: torch.Tensor, correct: torch.Tensor,
                   thresholds: Sequence[float] = THRESHOLDS) -> list[dict[str, float]]:
    """One row per threshold: ``threshold``, ``coverage`` (share at or above), ``accuracy`` of
    those (NaN when none), ``count``."""
    confidence, correct = torch.as_tensor(confidence).float(), torch.as_tensor(correct).bool()
    rows = []
    for t in thresholds:
        kept = confidence >= t
        n = int(kept.sum())
        rows.append({"threshold": float(t), "coverage": n / max(1, len(confidence)),
                     "accuracy": float(correct[kept].float().mean()) if n else float("nan"), "count": n})
    return rows


def curve(confidence: torch.Tensor, correct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(thresholds, coverage, accuracy) at every distinct confidence, most confident first."""
    confidence, correct = torch.as_tensor(confidence).double(), torch.as_tensor(correct).double()
    order = confidence.argsort(descending=True)
    conf, hits = confidence[order], correct[order].cumsum(0)
    last = torch.ones(len(conf), dtype=torch.bool)  # the last photo of each run of equal confidences
    last[:-1] = conf[1:] != conf[:-1]
    n = torch.arange(1, len(conf) + 1, dtype=torch.float64)
    return conf[last], (n / len(conf))[last], (hits / n)[last]


def threshold_for_accuracy(confidence: torch.Tensor, correct: torch.Tensor, target: float
                           ) -> tuple[float, float] | None:
    """(threshold, coverage): the lowest confidence threshold whose photos at or above it reach
    ``target`` accuracy, i.e. the most photos filed at that accuracy; None if no threshold does."""
    if len(torch.as_tensor(confidence)) == 0:
        return None
    thresholds, coverage, accuracy = curve(confidence, correct)
    ok = (accuracy >= target - 1e-12).nonzero()
    if len(ok) == 0:
        return None
    i = int(ok.max())
    return float(thresholds[i]), float(coverage[i])


def operating_line(target: float, found: tuple[float, float] | None) -> str:
    """The sentence a shop reads: "at >= 0.98 accuracy, 81% of photos are filed automatically"."""
    if found is None:
        return f"at >= {target:g} accuracy: no confidence threshold reaches it"
    threshold, coverage = found
    return (f"at >= {target:g} accuracy, {coverage:.0%} of photos are filed automatically "
            f"(confidence >= {threshold:.3f})")
