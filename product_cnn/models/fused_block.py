"""The mirror's first block after its convolution, fused for training: ReLU -> BatchNorm -> 2x2 max-pool.

At 256x256 the convolution's output is 251x251x64 per image, and every layer after it reads
and writes that whole tensor again; most of a CPU training step goes there
(docs/performance.md). In training, BatchNorm is a per-channel affine map ``y = a * z + b``
with ``a = gamma / sqrt(var + eps)``, ``var`` and the mean being the batch statistics of the
full map. Where ``a > 0`` (every ``gamma > 0``) the map keeps the order of values, so
``maxpool(a * z + b) == a * maxpool(z) + b``: the statistics are still taken over the full map
(one read), but the normalisation runs on the pooled quarter-size tensor. The full-size
BatchNorm output is never written, and never kept for the backward pass. The backward pass is
BatchNorm's own kernel on the pooled gradient scattered to the maxima, which are the same
positions in ``z`` as in ``a * z + b``: the gradients are the ones the layers give.

Where some ``gamma <= 0`` the identity does not hold (the maximum would become a minimum); the
caller then runs the ordinary layers. Nothing here changes parameters or checkpoints: the
function reads the ``nn.BatchNorm2d`` module's weight, bias and running statistics, and updates
the running statistics exactly as the module does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_POOL = ([2, 2], [2, 2], [0, 0], [1, 1], False)  # kernel, stride, padding, dilation, ceil_mode


class _ReluBatchNormPool(torch.autograd.Function):
    """``maxpool2x2(batchnorm_train(relu(c)))`` for a BatchNorm whose ``gamma`` is all positive."""

    @staticmethod
    def forward(ctx, c: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                running_mean: torch.Tensor, running_var: torch.Tensor, momentum: float,
                eps: float) -> torch.Tensor:
        z = torch.relu(c)  # out of place: faster than in place for bf16 on CPU, same traffic
        # batch mean and biased variance (float32, also for bf16 input); updates the running
        # statistics in place with the unbiased variance, as BatchNorm's own forward does
        mean, var = torch.batch_norm_update_stats(z, running_mean, running_var, momentum)
        invstd = torch.rsqrt(var + eps)
        pooled, indices = F.max_pool2d_with_indices(z, *_POOL[:4])
        scale = (weight * invstd).view(1, -1, 1, 1)
        shift = (bias - mean * weight * invstd).view(1, -1, 1, 1)
        out = torch.addcmul(shift, pooled.to(scale.dtype), scale)  # bf16 input: in float32
        ctx.save_for_backward(z, indices, mean, invstd, weight)
        ctx.eps = eps
        return out.to(z.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        z, indices, mean, invstd, weight = ctx.saved_tensors
        # the gradient at BatchNorm's full-size output: the pooled gradient, at the maxima.
        # BatchNorm's own backward kernel does the rest, with the batch statistics of forward.
        grad_y = torch.ops.aten.max_pool2d_with_indices_backward(grad_out, z, *_POOL, indices)
        grad_z, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
            grad_y, z, weight, None, None, mean, invstd, True, ctx.eps, [True, True, True])
        # ReLU: zero where z == 0, in place
        grad_c = torch.ops.aten.threshold_backward.grad_input(grad_z, z, 0, grad_input=grad_z)
        return grad_c, grad_weight, grad_bias, None, None, None, None


def _hooked(module: nn.Module) -> bool:
    """Whether a forward hook would see this module run (its own hooks or global ones)."""
    from torch.nn.modules import module as hooks

    return bool(module._forward_hooks or module._forward_pre_hooks
                or hooks._global_forward_hooks or hooks._global_forward_pre_hooks)


def can_fuse(layers: nn.Sequential, c: torch.Tensor) -> bool:
    """Whether :func:`relu_batchnorm_maxpool` computes what ``layers`` (ReLU, BatchNorm2d,
    MaxPool2d(2)) would on ``c``, here.

    A training-mode ``nn.BatchNorm2d`` (not SyncBatchNorm) with running statistics and a
    momentum, a CPU tensor (the only device it was measured on), every ``gamma > 0``, and no
    forward hook on the layers (a hook expects its layer to run).
    """
    relu, bn, pool = layers
    return (isinstance(relu, nn.ReLU) and type(bn) is nn.BatchNorm2d and isinstance(pool, nn.MaxPool2d)
            and pool.kernel_size in (2, (2, 2)) and pool.stride in (2, (2, 2), None)
            and pool.padding in (0, (0, 0)) and pool.dilation in (1, (1, 1)) and not pool.ceil_mode
            and bn.training and bn.track_running_stats and bn.running_mean is not None
            and bn.momentum is not None and bn.affine and c.device.type == "cpu" and c.dim() == 4
            and not any(_hooked(m) for m in layers) and bool((bn.weight > 0).all()))


def relu_batchnorm_maxpool(c: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """``MaxPool2d(2)(bn(relu(c)))`` in training mode, without a full-size BatchNorm output.

    Only valid where :func:`can_fuse` says so. Updates ``bn``'s running statistics and
    ``num_batches_tracked`` exactly as ``bn``'s own forward pass does.
    """
    out = _ReluBatchNormPool.apply(c, bn.weight, bn.bias, bn.running_mean, bn.running_var,
                                   float(bn.momentum), float(bn.eps))
    bn.num_batches_tracked.add_(1)
    return out
