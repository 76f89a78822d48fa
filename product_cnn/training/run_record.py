"""What a run records for its reports: the contract between the LightningModule and the callbacks.

The module fills a :class:`RunRecord` as training and testing go; the report callbacks read it
through :func:`record_of`, and nothing else of the module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class RunRecord:
    """Per-epoch history, the latest validation confusion matrix, the latest test report and
    test predictions."""

    class_names: list[str]
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch: epoch, train/*, val/*
    val_confusion: torch.Tensor | None = None  # rows: true class, columns: predicted
    test_report: dict[str, torch.Tensor] | None = None  # stage_metrics.report_metrics(...).compute()
    # per test photo: its index in the test split and the class probabilities, sorted by index
    test_predictions: tuple[torch.Tensor, torch.Tensor] | None = None  # temperature-scaled
    test_raw_probs: torch.Tensor | None = None  # the same photos' probabilities before scaling
    temperature: float = 1.0  # what the test applied
    confidence: Any = None  # the module's ConfidenceCard, if it was calibrated


def record_of(pl_module: Any) -> RunRecord:
    """The :class:`RunRecord` a module keeps in ``.record``; a clear error when there is none."""
    record = getattr(pl_module, "record", None)
    if not isinstance(record, RunRecord):
        raise TypeError(f"{type(pl_module).__name__} keeps no RunRecord in .record: "
                        "the report callbacks need one (see product_cnn/run_record.py)")
    return record
