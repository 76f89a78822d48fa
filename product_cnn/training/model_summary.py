"""The Keras-style model table in the training log, in place of Lightning's own summary."""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.callbacks import ModelSummary as LightningModelSummary
from lightning.pytorch.utilities import rank_zero_only

from product_cnn.models.summary import format_summary, summarize_network

log = logging.getLogger(__name__)


class ModelSummary(LightningModelSummary):
    """Logs the Keras-style table when training starts (in place of Lightning's own summary)."""

    def __init__(self) -> None:
        super().__init__(max_depth=1)

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        net = getattr(pl_module, "net", pl_module)
        log.info("\n%s", format_summary(summarize_network(net, pl_module.hparams.image_size)))
