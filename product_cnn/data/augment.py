"""Training-time augmentation (torchvision transforms v2 on uint8 tensors), off by default.

* ``none``:   the original: every photo as it is.
* ``light``:  random resized crop (60-100% of the area, aspect 3:4-4:3) and horizontal flip.
* ``strong``: light, plus colour jitter and TrivialAugmentWide.

Applied to training batches only, after the decoded-image cache (so the cache holds the plain
photo and every epoch sees a new variant) and after the batch reaches the training device (on
a GPU the transforms run there), with a new random draw for every photo of the batch.
MixUp / CutMix (:func:`build_mix`) then blend pairs of photos of the batch and their labels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchvision.transforms import v2

from product_cnn.data.images import ImageSize, image_hw
from product_cnn.errors import DataError

AUGMENTS = ("none", "light", "strong")


Transform = Callable[[torch.Tensor], torch.Tensor]


def build_augment(name: str, image_size: ImageSize) -> Transform | None:
    """The transform for ``name`` (one of :data:`AUGMENTS`), or None for ``none``."""
    if name not in AUGMENTS:
        raise DataError(f"data.augment={name!r} is not one of {', '.join(AUGMENTS)}")
    if name == "none":
        return None
    steps: list[Callable] = [
        v2.RandomResizedCrop(image_hw(image_size), scale=(0.6, 1.0), ratio=(3 / 4, 4 / 3), antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    if name == "strong":
        steps += [v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05),
                  v2.TrivialAugmentWide()]
    return v2.Compose(steps)


def build_mix(mixup_alpha: float, cutmix_alpha: float, num_classes: int) -> Callable | None:
    """torchvision's MixUp and/or CutMix for ``(images, labels)`` batches; None when both are 0."""
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise DataError(f"data.mixup_alpha={mixup_alpha} and data.cutmix_alpha={cutmix_alpha} must be >= 0")
    mixes = []
    if mixup_alpha > 0:
        mixes.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0:
        mixes.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)
