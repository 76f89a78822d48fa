"""The LightningModule: the Keras-mirror network plus loss, metrics and optimiser."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from product_cnn.model import KerasCNN

STAGES = ("train", "val", "test")
KERAS_ADAM = {"_target_": "torch.optim.Adam", "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-7}


def _plain(value: Any) -> Any:
    """OmegaConf containers -> plain dicts/lists, so checkpoints hold only plain types."""
    if isinstance(value, DictConfig) or OmegaConf.is_list(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


class ProductClassifier(L.LightningModule):
    """Trains :class:`KerasCNN` with cross-entropy on logits; inference returns softmax.

    ``optimizer`` and ``scheduler`` are Hydra-style dicts (``_target_`` plus arguments),
    instantiated in :meth:`configure_optimizers`. Class names are saved with the checkpoint.
    """

    def __init__(
        self,
        num_classes: int = 5,
        class_names: Sequence[str] | None = None,
        image_size: int = 256,
        dropout: float = 0.1,
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        class_names = list(_plain(class_names)) if class_names is not None else None
        if class_names is not None:
            num_classes = len(class_names)
        optimizer = _plain(optimizer) if optimizer is not None else dict(KERAS_ADAM)
        scheduler = _plain(scheduler)
        image_size = _plain(image_size)
        self.save_hyperparameters()
        self.net = KerasCNN(num_classes=num_classes, image_size=image_size, dropout=dropout)
        metrics = MetricCollection({
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "f1": MulticlassF1Score(num_classes, average="macro"),
        })
        # ModuleDict keys may not be "train" (an nn.Module method), hence the "_" suffix
        self.metrics = torch.nn.ModuleDict({
            f"{stage}_": metrics.clone(prefix=f"{stage}/") for stage in STAGES
        })
        self.losses = torch.nn.ModuleDict({f"{stage}_": MeanMetric() for stage in STAGES})

    @property
    def class_names(self) -> list[str]:
        names = self.hparams.class_names
        return list(names) if names else [str(i) for i in range(self.hparams.num_classes)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a float batch in [0, 1]."""
        return self.net(x)

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        images, labels = batch[0], batch[1]
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        self.losses[f"{stage}_"].update(loss.detach(), weight=labels.numel())
        self.metrics[f"{stage}_"].update(logits.detach(), labels)
        return loss

    def _log_epoch(self, stage: str) -> None:
        values = {f"{stage}/loss": self.losses[f"{stage}_"].compute(), **self.metrics[f"{stage}_"].compute()}
        self.log_dict(values, sync_dist=False, prog_bar=stage != "test")
        self.losses[f"{stage}_"].reset()
        self.metrics[f"{stage}_"].reset()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        """Class probabilities (softmax) for a batch."""
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        return torch.softmax(self(images).float(), dim=1)

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # the sanity check must not leak into val metrics
            self.losses["val_"].reset()
            self.metrics["val_"].reset()
            return
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self) -> Any:
        optimizer = instantiate(self.hparams.optimizer, params=self.parameters())
        if not self.hparams.scheduler:
            return optimizer
        scheduler_cfg = dict(self.hparams.scheduler)
        monitor = scheduler_cfg.pop("monitor", "val/loss")
        interval = scheduler_cfg.pop("interval", "epoch")
        scheduler = instantiate(scheduler_cfg, optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": monitor, "interval": interval},
        }
