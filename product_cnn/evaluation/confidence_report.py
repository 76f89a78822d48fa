"""The confidence part of a report: calibration error before and after temperature scaling, the
reliability diagram (``calibration.png``), the accuracy-coverage table and ``coverage.png``, and
the operating points a shop reads ("at >= 0.98 accuracy, 81% of photos are filed automatically")."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from product_cnn.confidence.card import ConfidenceCard
from product_cnn.confidence.coverage import (
    TARGETS,
    coverage_table,
    curve,
    operating_line,
    threshold_for_accuracy,
)
from product_cnn.confidence.temperature import ECE_BINS, calibration_error, reliability

CONFIDENCE_FILES = ("calibration.png", "coverage.png")


def confidence_section(probs: torch.Tensor, raw_probs: torch.Tensor, *, labels: torch.Tensor,
                       temperature: float | list[float] = 1.0, card: ConfidenceCard | None = None
                       ) -> dict[str, Any]:
    """What ``metrics.json`` / ``cv_summary.json`` say about confidence on these photos.

    ``operating_points``: the threshold reaching each target on these photos themselves (what was
    possible); ``heldout_operating_points`` (with a card): the threshold the checkpoint stored,
    from its held-out photos, and what it gave here (what a user gets).
    """
    probs, raw_probs, labels = torch.as_tensor(probs), torch.as_tensor(raw_probs), torch.as_tensor(labels)
    confidence, predicted = probs.max(1)
    correct = predicted == labels
    section: dict[str, Any] = {
        "temperature": temperature,
        "calibrated_on": card.source if card is not None else None,
        "ece_bins": ECE_BINS,
        "ece_before": calibration_error(raw_probs, labels),
        "ece_after": calibration_error(probs, labels),
        "coverage": coverage_table(confidence, correct),
        "operating_points": [],
    }
    for target in TARGETS:
        found = threshold_for_accuracy(confidence, correct, target)
        section["operating_points"].append({
            "target_accuracy": target, "threshold": found[0] if found else None,
            "coverage": found[1] if found else 0.0, "line": operating_line(target, found)})
    if card is not None:
        section["heldout_operating_points"] = []
        for target in TARGETS:
            stored = card.threshold_for(target)
            row: dict[str, Any] = {"target_accuracy": target, "threshold": stored[0] if stored else None}
            if stored:
                kept = confidence >= stored[0]
                row["coverage"] = float(kept.float().mean())
                row["accuracy"] = float(correct[kept].float().mean()) if kept.any() else float("nan")
            section["heldout_operating_points"].append(row)
    return section


def confidence_lines(section: dict[str, Any]) -> list[str]:
    """The section as a few lines of text (the classification report, cv_report.md)."""
    t = section["temperature"]
    if isinstance(t, float):
        t_text = f"{t:.3f}"
    else:  # a sweep: per fold; an ensemble of sweeps: each member its own
        t_text = "per fold " + ", ".join(f"{x:.3f}" for x in t) if t else "each member's own"
    source = f", fitted on the {section['calibrated_on']}" if section.get("calibrated_on") else ""
    lines = [f"Calibration: expected calibration error {section['ece_before']:.4f} before, "
             f"{section['ece_after']:.4f} after temperature scaling (T = {t_text}{source}); "
             "calibration.png", "Operating points on these photos (coverage.png):"]
    lines += [f"  {p['line']}" for p in section["operating_points"]]
    for p in section.get("heldout_operating_points", []):
        target = f"  target_accuracy={p['target_accuracy']:g}"
        if p["threshold"] is None:
            lines.append(f"{target}: the held-out photos reach it at no threshold")
        else:
            lines.append(f"{target} (threshold {p['threshold']:.3f} from the held-out photos): "
                         f"{p['coverage']:.0%} filed here, accuracy {p['accuracy']:.3f}")
    lines += ["", "confidence >= | filed | accuracy", "---|---|---"]
    lines += [f"{r['threshold']:.2f} | {r['coverage']:.1%} ({r['count']}) | {r['accuracy']:.3f}"
              for r in section["coverage"]]
    return lines


def reliability_figure(probs: torch.Tensor, raw_probs: torch.Tensor, labels: torch.Tensor) -> Figure:
    """Accuracy against confidence per bin, before and after temperature scaling."""
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    for p, name, style in ((raw_probs, "before", "-o"), (probs, "after", "-s")):
        rows = reliability(p, labels)
        if rows:
            conf, acc, _ = zip(*rows, strict=True)
            ax.plot(conf, acc, style, markersize=4,
                    label=f"{name} scaling (ECE {calibration_error(p, labels):.3f})")
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Reliability ({len(labels)} photos, {ECE_BINS} bins)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def coverage_figure(probs: torch.Tensor, labels: torch.Tensor) -> Figure:
    """Accuracy of the photos filed against the share filed, as the threshold falls."""
    confidence, predicted = torch.as_tensor(probs).max(1)
    _, coverage, accuracy = curve(confidence, predicted == torch.as_tensor(labels))
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    ax.plot(np.asarray(coverage), np.asarray(accuracy), "-")
    for target in TARGETS:
        ax.axhline(target, color="grey", linestyle=":", linewidth=1)
        ax.text(0.01, target, f" {target:g}", va="bottom", fontsize=8, color="grey")
    ax.set_xlabel("share of photos filed automatically (coverage)")
    ax.set_ylabel("accuracy of the photos filed")
    ax.set_xlim(0, 1)
    ax.set_title("Accuracy-coverage")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig

