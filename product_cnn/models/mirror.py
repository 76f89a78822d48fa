"""The network: a layer-for-layer mirror of the original Keras CNN, as a plain ``nn.Module``.

Keras semantics are kept where they differ from PyTorch defaults: activation *before*
BatchNorm, BatchNorm ``eps=1e-3`` and running-stat momentum 0.01 (Keras ``momentum=0.99``),
Glorot-uniform kernels and zero biases. Nothing here knows about Lightning.
"""

from __future__ import annotations

import torch
from torch import nn

from product_cnn.data.images import ImageSize, image_hw
from product_cnn.models.fused_block import can_fuse, relu_batchnorm_maxpool

KERAS_BN_EPS = 1e-3
KERAS_BN_MOMENTUM = 0.01  # PyTorch counts momentum the other way round: Keras 0.99 -> 0.01


def feature_map_size(image_size: ImageSize) -> tuple[int, int]:
    """Spatial size after both conv/pool stages (61x61 for a 256x256 input)."""
    out = []
    for side in image_hw(image_size):
        side = (side - 5) // 2  # 6x6 valid conv, then 2x2 max-pool
        side = (side - 2) // 2  # 3x3 valid conv, then 2x2 max-pool
        if side < 1:
            raise ValueError(f"image_size {image_size} is too small for this network (need >= 14)")
        out.append(side)
    return out[0], out[1]


class KerasCNN(nn.Module):
    """Conv(64, 6x6) -> BN -> pool -> Conv(16, 3x3) -> BN -> pool -> Dense 64 -> 16 -> classes.

    Takes a float batch ``(N, 3, H, W)`` in [0, 1] and returns logits ``(N, num_classes)``.
    With ``fused_block`` (the default) eager training on CPU runs the first block's ReLU,
    BatchNorm and max-pool as one autograd function (product_cnn/fused_block.py): the same
    results and parameters, with the full-size BatchNorm output never written or kept for the
    backward pass. A compiled network (``torch.compile``) and every other case run the layers
    as they are.
    """

    def __init__(
        self,
        num_classes: int = 5,
        image_size: ImageSize = 256,
        dropout: float = 0.1,
        fused_block: bool = True,
    ) -> None:
        super().__init__()
        self.fused_block = fused_block
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        fh, fw = feature_map_size(image_size)
        bn2d = dict(eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM)
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=6),
            nn.ReLU(inplace=True),
            nn.BatchNorm2d(64, **bn2d),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 16, kernel_size=3),
            nn.ReLU(inplace=True),
            nn.BatchNorm2d(16, **bn2d),
            nn.MaxPool2d(2),
        )
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(16 * fh * fw, 64),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(64, **bn2d),
            nn.Dropout(dropout),
            nn.Linear(64, 16),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(16, **bn2d),
            nn.Dropout(dropout),
            nn.Linear(16, num_classes),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Keras initialisation: Glorot-uniform kernels, zero biases, BN gamma=1 beta=0."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features
        if self.fused_block and self.training and not torch.compiler.is_compiling():
            c = f[0](x)
            if can_fuse(f[1:4], c):
                return self.classifier(self.flatten(f[4:](relu_batchnorm_maxpool(c, f[2]))))
            return self.classifier(self.flatten(f[1:](c)))
        return self.classifier(self.flatten(f(x)))

    def keras_layers(self) -> list[tuple[str, str, tuple[nn.Module, ...]]]:
        """The original's Keras layers, in order: (Keras name, Keras class, our modules).

        A Keras Conv2D or Dense layer includes its activation (two of our modules). The
        original's second Flatten (after the first Dropout, a no-op on a flat tensor) has no
        module here: this network leaves it out.
        """
        f, c = self.features, self.classifier
        bn, pool = "BatchNormalization", "MaxPooling2D"
        return [
            ("conv2d", "Conv2D", (f[0], f[1])), ("batch_normalization", bn, (f[2],)),
            ("max_pooling2d", pool, (f[3],)),
            ("conv2d_1", "Conv2D", (f[4], f[5])), ("batch_normalization_1", bn, (f[6],)),
            ("max_pooling2d_1", pool, (f[7],)),
            ("flatten", "Flatten", (self.flatten,)),
            ("dense", "Dense", (c[0], c[1])), ("batch_normalization_2", bn, (c[2],)),
            ("dropout", "Dropout", (c[3],)),
            ("flatten_1", "Flatten", ()),
            ("dense_1", "Dense", (c[4], c[5])), ("batch_normalization_3", bn, (c[6],)),
            ("dropout_1", "Dropout", (c[7],)),
            ("dense_2", "Dense", (c[8],)),
        ]
