"""Several pretrained backbones as one network (``model.arch=tf_efficientnet_lite0+tf_efficientnet_lite2``):
each sees the photo resized to the size it was pretrained at, their pooled features are
concatenated (each averaged with its mirror image's when ``flip``), one linear head reads them.

The network takes the usual ``(N, 3, H, W)`` batch in [0, 1] (``data.image_size``: the largest
member's size) and returns logits, so checkpoints, predict.py, serve.py, exports and ensembles take
it unchanged. Its ``members`` each have ``features()`` and ``backbone``, which the probe caches one
by one (:mod:`product_cnn.training.probe`). Nothing here knows about Lightning.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ResizedFeatures(nn.Module):
    """One member: ``net`` (with ``features()``, ``backbone`` and ``width``) fed the photo at ``size``."""

    def __init__(self, net: nn.Module, size: tuple[int, int], flip: bool = False) -> None:
        super().__init__()
        self.net, self.size, self.flip = net, (int(size[0]), int(size[1])), flip
        self.arch = f"{getattr(net, 'arch', type(net).__name__)}@{self.size[0]}x{self.size[1]}" \
                    f"{'+flip' if flip else ''}"

    @property
    def backbone(self) -> nn.Module:
        return self.net.backbone

    @property
    def width(self) -> int:
        """The length of its features (the net's ``width``)."""
        return int(self.net.width)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        features = self.net.features(x)
        if self.flip:
            features = (features + self.net.features(x.flip(-1))) / 2
        return features


class MultiNet(nn.Module):
    """``members``' features side by side, then a linear head for ``num_classes``."""

    def __init__(self, members: Sequence[ResizedFeatures], num_classes: int) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.arch = "+".join(getattr(m.net, "arch", "?") for m in members)
        self.head = nn.Linear(sum(m.width for m in members), num_classes)

    @property
    def backbone(self) -> nn.Module:
        """Every member's backbone (what freezing and the backbone learning rate act on)."""
        return nn.ModuleList([m.backbone for m in self.members])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m.features(x) for m in self.members], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
