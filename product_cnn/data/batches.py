"""What happens to a batch once it reaches the training device, for every data module: augmentation
(training batches only, a new draw per image), uint8 -> float in [0, 1], then MixUp / CutMix."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from product_cnn.data.images import to_unit_float


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
