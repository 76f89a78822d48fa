"""A run's metrics per stage (train, val, test): mean loss, accuracy and macro F1 for the log,
the validation confusion matrix, and the per-class counts of the test report. Steps are added in
batches (:meth:`StageMetrics.add`): one GPU sync per batch of steps, not one per step."""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

STAGES = ("train", "val", "test")


def report_metrics(num_classes: int) -> MetricCollection:
    """Everything the evaluation report needs, all derived from synced per-class counts."""
    metrics: dict[str, Any] = {
        "acc": MulticlassAccuracy(num_classes, average="micro"),
        "confmat": MulticlassConfusionMatrix(num_classes),
    }
    for name, cls in (("precision", MulticlassPrecision), ("recall", MulticlassRecall),
                      ("f1", MulticlassF1Score)):
        for average in ("none", "macro", "weighted"):
            metrics[f"{name}_{average}"] = cls(num_classes, average=average, zero_division=0)
    return MetricCollection(metrics)


class StageMetrics(torch.nn.Module):
    """The torchmetrics of each stage (synced across processes by torchmetrics itself)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        # Metrics skip torchmetrics' input checks and NaN scans (each one a GPU sync) -- the
        # inputs are ours; a NaN loss shows as a NaN epoch loss.
        metrics = MetricCollection({
            "acc": MulticlassAccuracy(num_classes, average="micro", validate_args=False),
            "f1": MulticlassF1Score(num_classes, average="macro", validate_args=False),
        })
        # ModuleDict keys may not be "train" (an nn.Module method), hence the "_" suffix
        self.metrics = torch.nn.ModuleDict({f"{s}_": metrics.clone(prefix=f"{s}/") for s in STAGES})
        self.losses = torch.nn.ModuleDict({f"{s}_": MeanMetric(nan_strategy="disable") for s in STAGES})
        self.val_confmat = MulticlassConfusionMatrix(num_classes)
        self.test_report = report_metrics(num_classes)
        # Per-step (loss, logits, labels) waiting to be added. Per-class metrics count with
        # torch.bincount, which waits for the GPU (a sync per step would stall the queue of a GPU
        # that is faster than Python); batching the updates leaves one per flush.
        self._pending: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {
            s: [] for s in STAGES}

    def add(self, stage: str, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, *,
            flush_every: int) -> None:
        """One step's detached results; added to the metrics every ``flush_every`` steps."""
        self._pending[stage].append((loss, logits, labels))
        if len(self._pending[stage]) >= flush_every:
            self.flush(stage)

    def flush(self, stage: str) -> None:
        """Add the pending steps of ``stage`` to its metrics (and the val/test extras)."""
        pending, self._pending[stage] = self._pending[stage], []
        if not pending:
            return
        losses, logits, labels = zip(*pending, strict=True)
        counts = torch.stack([torch.full((), len(y), dtype=torch.float32, device=y.device) for y in labels])
        logits, labels = torch.cat(logits), torch.cat(labels)
        self.losses[f"{stage}_"].update(torch.stack(losses).float(), weight=counts)
        self.metrics[f"{stage}_"].update(logits, labels)
        if stage == "val":
            self.val_confmat.update(logits, labels)
        elif stage == "test":
            self.test_report.update(logits, labels)

    def epoch(self, stage: str) -> dict[str, torch.Tensor]:
        """The stage's loss, accuracy and F1 over the epoch (computed, then reset)."""
        self.flush(stage)
        values = {f"{stage}/loss": self.losses[f"{stage}_"].compute(), **self.metrics[f"{stage}_"].compute()}
        self.losses[f"{stage}_"].reset()
        self.metrics[f"{stage}_"].reset()
        return values

    def discard_val(self) -> None:
        """Forget the validation steps so far (Lightning's sanity check)."""
        self._pending["val"] = []
        self.losses["val_"].reset()
        self.metrics["val_"].reset()
        self.val_confmat.reset()

    def val_confusion(self) -> torch.Tensor:
        """The validation confusion matrix of the epoch (on the CPU), then reset."""
        confusion = self.val_confmat.compute().cpu()
        self.val_confmat.reset()
        return confusion

    def test_counts(self) -> dict[str, torch.Tensor]:
        """The test report's metrics (on the CPU), then reset; :meth:`epoch` flushes first."""
        report = {k: v.cpu() for k, v in self.test_report.compute().items()}
        self.test_report.reset()
        return report
