"""What every data module shares: its split table, class weights and the network's arguments
(from ``counts()``), and what happens to a batch once it reaches the training device:
augmentation (training batches only, a new draw per image), uint8 -> float in [0, 1], MixUp / CutMix."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from product_cnn.data.catalogue import count_table
from product_cnn.data.images import to_unit_float
from product_cnn.errors import DataError


class CountedSplits:
    """Mixed into a data module with ``class_names``, ``counts()`` (photos per class per split) and
    ``hparams.balance``."""

    class_names: list[str]

    def counts(self) -> dict[str, list[int]]:
        raise NotImplementedError

    def model_args(self) -> dict[str, Any]:
        """What the network needs from the data: the class names and, with
        ``balance=weighted_loss``, the loss weights."""
        args: dict[str, Any] = {"class_names": self.class_names}
        if self.hparams.balance == "weighted_loss":
            args["class_weights"] = self.class_weights().tolist()
        return args

    def class_weights(self) -> torch.Tensor:
        """Inverse-frequency weights of the training split, ``n / (classes * n_c)`` (mean 1 per photo)."""
        counts = torch.tensor(self.counts()["train"], dtype=torch.float64)
        if (counts == 0).any():
            missing = [n for n, c in zip(self.class_names, counts.tolist(), strict=True) if c == 0]
            raise DataError(f"no training images for class(es) {', '.join(missing)}")
        return (counts.sum() / (len(counts) * counts)).float()

    def summary(self) -> str:
        """A small per-class, per-split table of image counts."""
        return count_table(self.class_names, self.counts())


class DeviceBatches:
    """Mixed into a LightningDataModule that sets ``self.augment`` (per-image, or None) and
    ``self.mix`` (MixUp / CutMix on a float batch, or None)."""

    augment: Callable | None = None
    mix: Callable | None = None

    def augment_batch(self, images: torch.Tensor) -> torch.Tensor:
        """``data.augment`` applied to each image of a uint8 batch, on the batch's device."""
        if self.augment is None:
            return images
        return torch.stack([self.augment(image) for image in images])

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Runs on the training device: augmentation and the uint8 -> float conversion happen on
        # the GPU when there is one.
        if isinstance(batch, torch.Tensor):  # images alone (the model summary's example input)
            return to_unit_float(batch)
        images, *rest = batch
        training = self.trainer is not None and self.trainer.training
        if training:
            images = self.augment_batch(images)
        images = to_unit_float(images)
        if training and self.mix is not None:
            images, rest[0] = self.mix(images, rest[0])
        return [images, *rest]
