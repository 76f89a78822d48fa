"""BatchNorm statistics from the current epoch only: eval-mode accuracy that tracks training.

Keras' BatchNorm momentum (0.99) averages its running statistics over about 100 steps. With a
few hundred photos that is about ten epochs, and Adam keeps moving the weights (the 59,536-input
dense layer above all), so the statistics used at evaluation lag far behind the network and
validation accuracy trails training by many epochs (docs/batchnorm.md). Re-estimating the
statistics from the latest weights ("precise BN") fixes that. This callback does it for free:
at the start of every training epoch it resets each BatchNorm's running statistics and
switches it to a cumulative average, so at the end of the epoch they are the plain mean over
that epoch's batches. Training itself (batch statistics) is unchanged.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn


def batchnorm_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer in ``module``."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class EpochBatchNormStats(Callback):
    """Reset BatchNorm running statistics each training epoch and average over its batches.

    During the epoch each layer runs with ``momentum=1`` (its running statistics are those of
    the latest batch) and after every batch they are replaced by the mean over the epoch's
    batches so far: what ``momentum=None`` computes, without the GPU-to-CPU sync that
    ``momentum=None`` costs on every forward pass, and with a constant momentum that a compiled
    network does not need to recompile for.
    """

    def __init__(self) -> None:
        self._stats: list[torch.Tensor] = []  # running mean and var of every layer
        self._sums: list[torch.Tensor] = []  # their sums over this epoch's batches
        self._batches = 0
        self._restored: dict[str, Any] | None = None  # from a mid-epoch checkpoint

    def state_dict(self) -> dict[str, Any]:
        """The epoch's sums so far: a run resumed mid-epoch averages over the whole epoch too."""
        return {"sums": [t.cpu() for t in self._sums], "batches": self._batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored = state_dict

    def _layers(self, pl_module: L.LightningModule) -> list[nn.modules.batchnorm._BatchNorm]:
        layers = [bn for bn in batchnorm_layers(pl_module) if bn.training]  # not those kept frozen
        for bn in layers:
            bn.momentum = 1.0  # running statistics = the statistics of the current batch
        self._stats = [t for bn in layers for t in (bn.running_mean, bn.running_var)]
        return layers

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restored = None  # a new epoch: a checkpoint's sums belonged to the one before
        for bn in self._layers(pl_module):
            bn.reset_running_stats()
        self._sums = [torch.zeros_like(t) for t in self._stats]
        self._batches = 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        # Resumed mid-epoch, Lightning does not call on_train_epoch_start: continue the saved sums.
        restored, self._restored = self._restored, None
        if restored is not None and not self._stats:
            self._layers(pl_module)
            if len(restored["sums"]) == len(self._stats):
                self._sums = [s.to(t.device) for s, t in zip(restored["sums"], self._stats, strict=True)]
                self._batches = int(restored["batches"])
            else:
                self._stats = []

    @torch.no_grad()
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if not self._stats:
            return
        self._batches += 1
        torch._foreach_add_(self._sums, self._stats)
        torch._foreach_copy_(self._stats, torch._foreach_div(self._sums, self._batches))
