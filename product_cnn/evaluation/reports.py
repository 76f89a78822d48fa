"""The evaluation report: metrics.json, classification_report.txt, confusion_matrix.png, curves.png.

The numbers come from torchmetrics (computed in the LightningModule, synced across processes);
this module only arranges them into files. Every file is written atomically: a crash or Ctrl-C
leaves either the previous file or the new one, never half of one.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure  # figures without pyplot: no display, no global state
from matplotlib.ticker import MaxNLocator

from product_cnn.atomic import atomic_path, write_text
from product_cnn.evaluation.confidence_report import (
    CONFIDENCE_FILES,
    confidence_lines,
    coverage_figure,
    reliability_figure,
)

REPORT_FILES = ("metrics.json", "classification_report.txt", "confusion_matrix.png", "curves.png")


def save_figure(path: str | Path, fig: Figure) -> None:
    """Save a matplotlib figure to ``path`` atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight")


def build_report(
    computed: dict[str, Any],
    class_names: Sequence[str],
    **context: Any,
) -> dict[str, Any]:
    """Arrange torchmetrics results (``training.stage_metrics.report_metrics``) as a report dict.

    ``computed`` holds tensors: ``acc``; ``precision``/``recall``/``f1`` per class (``*_none``),
    ``_macro`` and ``_weighted``; ``confmat`` (rows: true class, columns: predicted).
    ``context`` (checkpoint path, data root, split sizes...) is stored as is.
    """
    as_list = {k: np.asarray(v.detach().cpu() if hasattr(v, "detach") else v).tolist()
               for k, v in computed.items()}
    confmat = np.asarray(as_list["confmat"], dtype=np.int64)
    support = confmat.sum(axis=1)
    per_class = {
        name: {
            "precision": as_list["precision_none"][i],
            "recall": as_list["recall_none"][i],
            "f1": as_list["f1_none"][i],
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    }
    return {
        "accuracy": as_list["acc"],
        "macro": {k: as_list[f"{k}_macro"] for k in ("precision", "recall", "f1")},
        "weighted": {k: as_list[f"{k}_weighted"] for k in ("precision", "recall", "f1")},
        "per_class": per_class,
        "confusion_matrix": confmat.tolist(),
        "class_names": list(class_names),
        "num_samples": int(confmat.sum()),
        **context,
    }


def format_classification_report(report: dict[str, Any]) -> str:
    """The familiar per-class precision/recall/F1/support table, with class names."""
    names = report["class_names"]
    width = max(len(n) for n in [*names, "weighted avg"])
    header = f"{'':>{width}}  {'precision':>9}  {'recall':>9}  {'f1-score':>9}  {'support':>9}"
    lines = [header, ""]
    for name in names:
        row = report["per_class"][name]
        lines.append(f"{name:>{width}}  {row['precision']:>9.4f}  {row['recall']:>9.4f}  "
                     f"{row['f1']:>9.4f}  {row['support']:>9d}")
    total = report["num_samples"]
    lines += ["", f"{'accuracy':>{width}}  {'':>9}  {'':>9}  {report['accuracy']:>9.4f}  {total:>9d}"]
    for avg in ("macro", "weighted"):
        row = report[avg]
        lines.append(f"{avg + ' avg':>{width}}  {row['precision']:>9.4f}  {row['recall']:>9.4f}  "
                     f"{row['f1']:>9.4f}  {total:>9d}")
    if report.get("confidence"):
        lines += ["", *confidence_lines(report["confidence"])]
    return "\n".join(lines) + "\n"


def confusion_matrix_figure(confmat: Sequence[Sequence[int]], class_names: Sequence[str],
                            title: str = "Confusion matrix") -> Figure:
    """Counts and row-normalised (recall) confusion matrices side by side, labelled axes."""
    counts = np.asarray(confmat, dtype=np.int64)
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=float), where=rows > 0)
    size = 2.2 + 0.55 * len(class_names)
    fig = Figure(figsize=(2 * size + 1.5, size))
    axes = fig.subplots(1, 2)
    panels = ((counts, "counts", "d"), (normalised, "normalised by true class", ".2f"))
    for ax, (matrix, label, fmt) in zip(axes, panels, strict=True):
        ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
        ticks = range(len(class_names))
        ax.set_xticks(ticks, class_names, rotation=45, ha="right")
        ax.set_yticks(ticks, class_names)
        ax.set_xlabel("predicted category")
        ax.set_ylabel("true category")
        ax.set_title(f"{title} ({label})")
        for i in ticks:
            for j in ticks:
                ax.text(j, i, format(matrix[i, j], fmt), ha="center", va="center",
                        color="white" if normalised[i, j] > 0.5 else "black", fontsize=9)
    fig.tight_layout()
    return fig


def curves_figure(history: Sequence[dict[str, float]]) -> Figure:
    """Train/val loss and accuracy per epoch, like the original work's two plots."""
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("loss", "acc"), strict=True):
        for stage, style in (("train", "-o"), ("val", "-s")):
            points = [(h["epoch"] + 1, h[f"{stage}/{metric}"]) for h in history if f"{stage}/{metric}" in h]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, style, markersize=3, label=f"{stage}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("accuracy" if metric == "acc" else "cross-entropy loss")
        ax.set_title("Accuracy" if metric == "acc" else "Loss")
        ax.grid(alpha=0.3)
        if history:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no per-epoch history recorded", ha="center", va="center",
                    transform=ax.transAxes)
    fig.tight_layout()
    return fig


def write_report(
    out_dir: str | Path, report: dict[str, Any], history: Sequence[dict[str, float]]
) -> list[Path]:
    """Write the four report files into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    writers: dict[str, Callable[[Path], None]] = {
        "metrics.json": lambda p: write_text(p, json.dumps(report, indent=2) + "\n"),
        "classification_report.txt": lambda p: write_text(p, format_classification_report(report)),
        "confusion_matrix.png": lambda p: save_figure(
            p, confusion_matrix_figure(report["confusion_matrix"], report["class_names"])),
        "curves.png": lambda p: save_figure(p, curves_figure(history)),
    }
    paths = []
    for name in REPORT_FILES:
        writers[name](out_dir / name)
        paths.append(out_dir / name)
    return paths


def write_confidence_figures(out_dir: str | Path, probs: Any, raw_probs: Any, labels: Any) -> list[Path]:
    """``calibration.png`` (reliability before/after scaling) and ``coverage.png`` in ``out_dir``."""
    paths = [Path(out_dir, name) for name in CONFIDENCE_FILES]
    save_figure(paths[0], reliability_figure(probs, raw_probs, labels))
    save_figure(paths[1], coverage_figure(probs, labels))
    return paths


PREDICTIONS_FILE = "test_predictions.csv"


def prediction_columns(class_names: Sequence[str]) -> list[str]:
    """The per-class probability columns of the prediction files: ``prob_<class>``."""
    return [f"prob_{name}" for name in class_names]


def raw_columns(class_names: Sequence[str]) -> list[str]:
    """The probabilities before temperature scaling: ``raw_prob_<class>``."""
    return [f"raw_prob_{name}" for name in class_names]


def write_test_predictions(path: str | Path, samples: Sequence[tuple[str, int]], root: str,
                           *, class_names: Sequence[str], indices: Sequence[int], probs: np.ndarray,
                           raw_probs: np.ndarray | None = None) -> Path:
    """One row per test photo: path (relative to ``root``), label, predicted, the (calibrated)
    probabilities, and those before temperature scaling when given."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    raw = np.asarray(raw_probs) if raw_probs is not None else None
    writer.writerow(["path", "label", "predicted", *prediction_columns(class_names),
                     *(raw_columns(class_names) if raw is not None else [])])
    for n, (index, row) in enumerate(zip(indices, np.asarray(probs), strict=True)):
        file, label = samples[int(index)]
        writer.writerow([os.path.relpath(file, root).replace(os.sep, "/"), class_names[label],
                         class_names[int(row.argmax())], *(f"{p:.6f}" for p in row),
                         *(f"{p:.6f}" for p in (raw[n] if raw is not None else []))])
    write_text(path, buffer.getvalue())
    return Path(path)
