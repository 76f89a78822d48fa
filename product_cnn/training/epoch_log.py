"""One log line per training epoch, so that ``train.log`` tells the story without a terminal.

The line for an epoch is written once it is complete (metrics computed, checkpoints saved),
i.e. when the next epoch starts or training ends: epoch, train loss/accuracy, validation
loss/accuracy/macro F1, the epoch's wall time, the best validation accuracy so far, and the
time left at this run's average epoch time; and the process's resident memory when it has grown by
more than 5% since the first epoch that ended after the allocator's warm-up (noted again only after
another 5%).
"""

from __future__ import annotations

import logging
import time

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only

from product_cnn.runtime import WARMUP_STEPS, resident_bytes
from product_cnn.training.run_record import record_of

log = logging.getLogger(__name__)

GROWTH_NOTED = 0.05  # resident memory this much above the reference is noted in the epoch's line


def format_duration(seconds: float) -> str:
    """``4.2 s``, ``42 s``, ``3 min 05 s``, ``2 h 07 min``."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class EpochLog(Callback):
    """Log ``Epoch e/E  train ...  val ...  time  best  ETA`` after every training epoch."""

    def __init__(self, monitor: str = "val/acc") -> None:
        self.monitor = monitor
        self._epoch_start: float | None = None
        self._durations: list[float] = []
        self._logged = 0  # history entries already written
        self._memory: list[tuple[int, int]] = []  # (epoch, resident bytes) after the warm-up
        self._noted = 0  # the resident bytes last noted

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._durations, self._memory, self._noted = [], [], 0
        self._logged = len(record_of(pl_module).history)  # a resumed run's earlier epochs

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish_epoch(trainer, pl_module)
        self._epoch_start = time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish_epoch(trainer, pl_module)

    def _finish_epoch(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._epoch_start is not None:
            self._durations.append(time.perf_counter() - self._epoch_start)
            self._epoch_start = None
            resident = resident_bytes()
            if resident is not None and trainer.global_step >= WARMUP_STEPS:
                self._memory.append((trainer.current_epoch, resident))  # the epoch just finished, from 1
        history = record_of(pl_module).history
        for i, entry in enumerate(history[self._logged:], self._logged):
            self._log_line(trainer, history, entry, self.memory_note() if i == len(history) - 1 else "")
        self._logged = len(history)

    def memory_note(self) -> str:
        """``memory 3.80 GiB, +9.5% since epoch 1`` when resident memory grew by more than
        :data:`GROWTH_NOTED` since the first epoch this process finished after :data:`WARMUP_STEPS`
        steps, and since the last note; else empty."""
        if len(self._memory) < 2:
            return ""
        (epoch, first), (_, now) = self._memory[0], self._memory[-1]
        if now <= first * (1 + GROWTH_NOTED) or now <= self._noted * (1 + GROWTH_NOTED):
            return ""
        self._noted = now
        return f"memory {now / 2**30:.2f} GiB, {(now / first - 1) * 100:+.1f}% since epoch {epoch}"

    @rank_zero_only
    def _log_line(self, trainer: L.Trainer, history: list[dict[str, float]], entry: dict[str, float],
                  note: str = "") -> None:
        epoch = int(entry["epoch"]) + 1
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        parts = [f"Epoch {epoch}/{total}" if total else f"Epoch {epoch}"]
        for stage, names in (("train", ("loss", "acc")), ("val", ("loss", "acc", "f1"))):
            keys = [(name, f"{stage}/{name}") for name in names]
            values = [f"{name} {entry[key]:.4f}" for name, key in keys if key in entry]
            if values:
                parts.append(f"{stage} " + " ".join(values))
        if self._durations:
            parts.append(format_duration(self._durations[-1]))
        scored = [(h[self.monitor], int(h["epoch"]) + 1) for h in history if self.monitor in h]
        if scored:
            score, at = max(scored, key=lambda s: (s[0], -s[1]))  # the first epoch reaching the best
            parts.append(f"best {self.monitor} {score:.4f} (epoch {at})")
        if total and self._durations and epoch < total:
            average = sum(self._durations) / len(self._durations)
            parts.append(f"ETA {format_duration(average * (total - epoch))}")
        log.info("  ".join(parts + ([note] if note else [])))
