"""The model summary at the start of training, with true numbers.

Lightning's summary counts only ``nn.Parameter`` s and shows FLOPs only for a module with an
``example_input_array``. Here parameters are counted as Keras counts them (BatchNorm running
mean and variance are non-trainable parameters: 320 for the mirror) and the FLOPs are those of
one image at the training size (the module sets a one-image example input). One line with
the totals also goes to the log, so ``train.log`` has them when the run is not on a terminal.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichModelSummary
from lightning.pytorch.utilities.model_summary import ModelSummary as LightningModelSummary
from torch import nn

log = logging.getLogger(__name__)


def batchnorm_statistics(module: nn.Module) -> int:
    """Running means and variances of the BatchNorm layers in ``module`` (Keras' non-trainable)."""
    return sum(m.running_mean.numel() + m.running_var.numel() for m in module.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None)


class KerasCountSummary(LightningModelSummary):
    """Lightning's summary with BatchNorm statistics counted as (non-trainable) parameters."""

    @property
    def param_nums(self) -> list[int]:
        return [layer.num_parameters + batchnorm_statistics(layer._module)
                for layer in self._layer_summary.values()]

    @property
    def total_parameters(self) -> int:
        return super().total_parameters + batchnorm_statistics(self._model)


class ModelSummary(RichModelSummary):
    """The Rich summary table (console), with true counts and FLOPs, plus one line in the log."""

    def __init__(self, max_depth: int = 1, **summarize_kwargs: Any) -> None:
        super().__init__(max_depth, **summarize_kwargs)
        self._last: KerasCountSummary | None = None

    def _summary(self, trainer: L.Trainer, pl_module: L.LightningModule) -> KerasCountSummary:
        self._last = KerasCountSummary(pl_module, max_depth=self._max_depth)
        return self._last

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        summary, self._last = self._last, None
        if summary is None or not trainer.is_global_zero:
            return
        total, trainable = summary.total_parameters, summary.trainable_parameters
        example = getattr(pl_module, "example_input_array", None)
        per = f" per {example.shape[-1]}x{example.shape[-2]} image" if example is not None else ""
        net = getattr(pl_module, "net", pl_module)
        name = getattr(net, "arch", type(net).__name__)
        log.info("Model %s: %s parameters (%s trainable, %s non-trainable), %.3f GFLOP%s forward",
                 name, f"{total:,}", f"{trainable:,}", f"{total - trainable:,}",
                 summary.total_flops / 1e9, per)
