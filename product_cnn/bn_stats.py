"""BatchNorm statistics from the current epoch only: eval-mode accuracy that tracks training.

Keras' BatchNorm momentum (0.99) averages its running statistics over about 100 steps. With a
few hundred photos that is about ten epochs, and Adam keeps moving the weights (the 59,536-input
dense layer above all), so the statistics used at evaluation lag far behind the network: on the
demo data the faithful setup trains to ~100% while validation stays at chance for most of the
run. Re-estimating the statistics from the latest weights ("precise BN") fixes that. This
callback does it for free: at the start of every training epoch it resets each BatchNorm's
running statistics and switches it to a cumulative average, so at the end of the epoch they are
the plain mean over that epoch's batches. Training itself (batch statistics) is unchanged.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback
from torch import nn


def batchnorm_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every BatchNorm layer in ``module``."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class EpochBatchNormStats(Callback):
    """Reset BatchNorm running statistics each training epoch and average over its batches.

    The average is kept by setting each layer's momentum to ``1 / (k + 1)`` before the epoch's
    k-th batch (k from 0), which is what ``momentum=None`` computes, without the GPU-to-CPU
    sync that ``momentum=None`` costs on every forward pass. A compiled network keeps
    ``momentum=None``: a momentum that changes every step would recompile it every step.
    """

    def __init__(self) -> None:
        self._per_step: list[nn.modules.batchnorm._BatchNorm] = []  # layers to update each step

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        layers = batchnorm_layers(pl_module)
        for bn in layers:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative moving average over this epoch's batches
        self._per_step = [] if getattr(pl_module.hparams, "compile", False) else layers

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch,
                             batch_idx: int) -> None:
        for bn in self._per_step:  # the same average as momentum=None, without its GPU sync
            bn.momentum = 1.0 / (batch_idx + 1)
