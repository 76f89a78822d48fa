"""Inference-only network: the mirror's BatchNorm layers folded into the next layer, where exact.

In eval mode BatchNorm is a per-channel affine map ``y = a * x + b``. In the mirror each one
sits after a ReLU and before either a 2x2 max-pool or (past dropout, the identity in eval
mode) the next linear layer:

* BatchNorm -> Linear: the Linear absorbs it exactly (``W' = W * a``, ``b' = b + W @ b``).
* BatchNorm -> MaxPool -> Conv/Flatten+Linear: max-pooling commutes with ``a * x + b`` when
  ``a > 0`` for every channel (a maximum is kept by a positive scale), so the BatchNorm moves
  behind the pool and is absorbed by the next layer. A channel with ``a <= 0`` leaves that
  BatchNorm where it is (it would need min-pooling): the result stays exact either way.

What is left is fewer passes over the largest activations (the 251x251x64 output of the first
convolution at 256x256). The weights are copies: the trained network is not changed.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from product_cnn.models.mirror import KerasCNN


def _affine(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b)`` with ``bn(x) == a * x + b`` per channel, in eval mode."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


@torch.no_grad()
def _absorb(layer: nn.Conv2d | nn.Linear, scale: torch.Tensor, shift: torch.Tensor,
            repeat: int = 1) -> None:
    """Make ``layer(x)`` compute ``layer(scale * x + shift)``, per input channel (``repeat`` inputs each)."""
    scale, shift = scale.repeat_interleave(repeat), shift.repeat_interleave(repeat)
    if isinstance(layer, nn.Conv2d):
        layer.bias += (layer.weight * shift.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
        layer.weight *= scale.view(1, -1, 1, 1)
    else:
        layer.bias += layer.weight @ shift
        layer.weight *= scale.view(1, -1)


@torch.no_grad()
def fold_batchnorm(net: nn.Module) -> nn.Module:
    """An eval-mode copy of ``net`` with the mirror's BatchNorms folded where exact; other
    networks come back as an eval-mode copy."""
    folded = copy.deepcopy(net).eval()
    if not isinstance(folded, KerasCNN):
        return folded
    f, c = folded.features, folded.classifier
    spatial = c[0].in_features // f[6].num_features  # flattened positions per channel after block 2
    # (where the BatchNorm is, its index, the layer that absorbs it, inputs per channel, behind a pool?)
    # The last BatchNorm (before the classifier layer) stays: the "none of these" score reads the
    # classifier layer's input, which must be what it was in training (a 16-wide BatchNorm costs nothing)
    steps = [(f, 2, f[4], 1, True), (f, 6, c[0], spatial, True), (c, 2, c[4], 1, False)]
    for container, index, target, repeat, behind_pool in steps:
        bn = container[index]
        scale, shift = _affine(bn)
        if behind_pool and not bool((scale > 0).all()):
            continue  # a negative scale does not commute with max-pooling: leave this one
        _absorb(target, scale, shift, repeat)
        container[index] = nn.Identity()
    return folded
