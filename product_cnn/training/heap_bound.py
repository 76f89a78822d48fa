"""Resident memory that stays flat over a long epoch: :class:`~product_cnn.runtime.MemoryBound`
after every training step (``callbacks.heap_bound=null`` turns it off; so does
``PRODUCT_CNN_TUNE_MALLOC=0``, with the allocator tuning itself)."""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.callbacks import Callback

from product_cnn.runtime import WARMUP_STEPS, MemoryBound

log = logging.getLogger(__name__)


class HeapBound(Callback):
    """Trim the tuned heap whenever resident memory passes the first ``warmup`` steps' peak by more
    than ``slack`` (a fraction)."""

    def __init__(self, warmup: int = WARMUP_STEPS, slack: float = 0.03) -> None:
        self.warmup, self.slack = warmup, slack
        self.bound: MemoryBound | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.bound = MemoryBound(warmup=self.warmup, slack=self.slack)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object,
                           batch: object, batch_idx: int) -> None:
        if self.bound is not None and self.bound.step():
            log.debug("Heap trimmed at step %d (resident memory over %.0f MiB)", trainer.global_step,
                      self.bound.limit / 2**20)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.bound is not None and self.bound.trims:
            log.info("Memory: free heap pages handed back %d time(s), to stay near %.0f MiB resident",
                     self.bound.trims, self.bound.peak / 2**20)
