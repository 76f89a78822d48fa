"""Callbacks that turn results into things to look at: TensorBoard figures and the report files."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image, ImageDraw, ImageFont

from product_cnn.evaluation.confidence_report import confidence_section
from product_cnn.evaluation.reports import (
    PREDICTIONS_FILE,
    build_report,
    confusion_matrix_figure,
    write_confidence_figures,
    write_report,
    write_test_predictions,
)
from product_cnn.training.run_record import record_of

log = logging.getLogger(__name__)


def _tensorboard(trainer: L.Trainer) -> TensorBoardLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


class ValConfusionMatrixFigure(Callback):
    """Log the validation confusion matrix to TensorBoard (Images tab) after validation epochs.

    Drawing costs a fixed fraction of a second: little next to a CPU epoch, more than a whole
    GPU epoch on a few hundred photos (docs/performance.md). So the figure is drawn only while
    drawing has taken at most ``max_time_share`` of the training time so far (every epoch on a
    CPU, every few on a fast GPU), and always for the last epoch. ``max_time_share=1`` draws
    every epoch.
    """

    def __init__(self, max_time_share: float = 0.05) -> None:
        self.max_time_share = max_time_share
        self._start: float | None = None
        self._drawing = 0.0  # seconds spent drawing
        self._pending: tuple[list[list[int]], list[str], int] | None = None  # not drawn yet

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._drawing, self._pending = time.perf_counter(), 0.0, None

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        record = record_of(pl_module)
        if _tensorboard(trainer) is None or trainer.sanity_checking or record.val_confusion is None:
            return
        self._pending = (record.val_confusion.tolist(), record.class_names, trainer.current_epoch)
        if self._start is None or \
                self._drawing <= self.max_time_share * (time.perf_counter() - self._start):
            self._draw(trainer)

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._draw(trainer)  # the last validation epoch, when the budget skipped it

    def _draw(self, trainer: L.Trainer) -> None:
        tb = _tensorboard(trainer)
        if tb is None or self._pending is None:
            return
        start = time.perf_counter()
        confusion, names, epoch = self._pending
        fig = confusion_matrix_figure(confusion, names, title=f"Validation, epoch {epoch + 1}")
        tb.experiment.add_figure("val/confusion_matrix", fig, global_step=epoch)
        self._pending = None
        self._drawing += time.perf_counter() - start


class TestPredictionGrid(Callback):
    """Log a grid of test images titled 'predicted (true)', wrong ones in red, to TensorBoard."""

    def __init__(self, max_images: int = 32) -> None:
        self.max_images = max_images
        self._items: list[tuple[torch.Tensor, int, int, float]] = []

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._items = []

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                          batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        room = self.max_images - len(self._items)
        if room <= 0 or not isinstance(outputs, dict) or "probs" not in outputs:
            return
        images, labels = batch[0][:room].detach().float().cpu(), batch[1][:room].cpu()
        confidence, predicted = outputs["probs"][:room].max(dim=1)
        for image, label, pred, conf in zip(images, labels, predicted.cpu(), confidence.cpu(), strict=True):
            self._items.append((image, int(label), int(pred), float(conf)))

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tb = _tensorboard(trainer)
        if tb is None or not self._items:
            return
        grid = prediction_grid(self._items, record_of(pl_module).class_names)
        tb.experiment.add_image("test/predictions", np.asarray(grid), trainer.global_step, dataformats="HWC")
        self._items = []


def prediction_grid(items: list[tuple[torch.Tensor, int, int, float]], names: list[str], *,
                    cols: int = 8, tile: int = 160) -> Image.Image:
    """Photos (CHW floats in [0, 1]) in rows of ``cols``, each captioned 'predicted confidence' over
    '(true)', wrong ones in red. Pillow, not a Matplotlib figure: the cost is in docs/performance.md."""
    font = ImageFont.load_default(size=12)
    cols = min(cols, len(items))
    cell_h = tile + 40
    grid = Image.new("RGB", (cols * tile, math.ceil(len(items) / cols) * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    for n, (image, label, pred, conf) in enumerate(items):
        x, y = (n % cols) * tile, (n // cols) * cell_h
        photo = Image.fromarray((image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())
        photo.thumbnail((tile - 8, tile - 8))
        grid.paste(photo, (x + (tile - photo.width) // 2, y + 36 + (tile - 8 - photo.height) // 2))
        wrong = pred != label
        caption = f"{names[pred]} {conf:.2f}\n({names[label]})" + (" WRONG" if wrong else "")
        draw.multiline_text((x + tile // 2, y + 2), caption, fill="red" if wrong else "black", font=font,
                            anchor="ma", align="center")
    return grid


class ReportWriter(Callback):
    """After testing, write metrics.json, classification_report.txt, confusion_matrix.png,
    curves.png, test_predictions.csv (one row per test photo), calibration.png and coverage.png
    into ``dirpath``, and the hyperparameters, final metrics and the two figures to TensorBoard."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        record = record_of(pl_module)
        if record.test_report is None:
            return
        datamodule = trainer.datamodule
        context: dict[str, Any] = {"checkpoint": str(trainer.ckpt_path) if trainer.ckpt_path else None}
        if datamodule is not None and hasattr(datamodule, "counts"):
            context["data_root"] = datamodule.root
            context["split_sizes"] = {split: sum(c) for split, c in datamodule.counts().items()}
        report = build_report(record.test_report, record.class_names, **context)
        per_photo = record.test_predictions is not None and hasattr(datamodule, "split_samples")
        if per_photo and record.test_raw_probs is not None:
            indices, probs = record.test_predictions
            labels = torch.tensor([datamodule.split_samples["test"][int(i)][1] for i in indices])
            report["confidence"] = confidence_section(probs, record.test_raw_probs, labels=labels,
                                                      temperature=record.temperature, card=record.confidence)
        paths = write_report(self.dirpath, report, record.history)
        if per_photo:
            indices, probs = record.test_predictions
            raw = record.test_raw_probs
            paths.append(write_test_predictions(
                Path(self.dirpath, PREDICTIONS_FILE), datamodule.split_samples["test"],
                datamodule.root, class_names=record.class_names, indices=indices.tolist(),
                probs=probs.numpy(),
                raw_probs=raw.numpy() if raw is not None else None))
            if "confidence" in report:
                figures = write_confidence_figures(self.dirpath, probs, raw, labels)
                self._log_figures(trainer, figures)
                paths += figures
        log.info("Report: %s", ", ".join(str(p) for p in paths))
        log.info("Classification report (test split, %d images):\n%s", report["num_samples"],
                 Path(self.dirpath, "classification_report.txt").read_text().rstrip())
        self._log_hparams(trainer, pl_module, report, record.history)

    @staticmethod
    def _log_figures(trainer: L.Trainer, figures: list[Path]) -> None:
        """calibration.png and coverage.png, as written, to TensorBoard (not drawn twice)."""
        tb = _tensorboard(trainer)
        if tb is not None:
            for tag, path in zip(("test/calibration", "test/coverage"), figures, strict=True):
                with Image.open(path) as image:
                    pixels = np.asarray(image.convert("RGB"))
                tb.experiment.add_image(tag, pixels, trainer.global_step, dataformats="HWC")

    @staticmethod
    def _log_hparams(trainer: L.Trainer, pl_module: L.LightningModule, report: dict[str, Any],
                     history: list[dict[str, float]]) -> None:
        tb = _tensorboard(trainer)
        if tb is None:
            return
        params: dict[str, Any] = {k: v for k, v in pl_module.hparams.items() if k != "class_names"}
        if trainer.datamodule is not None:
            params.update({f"data/{k}": v for k, v in trainer.datamodule.hparams.items()})
        metrics = {"hp/test_acc": report["accuracy"], "hp/test_f1_macro": report["macro"]["f1"]}
        best = [h["val/acc"] for h in history if "val/acc" in h]
        if best:
            metrics["hp/best_val_acc"] = max(best)
        tb.log_hyperparams(params, metrics=metrics)
