"""Folded inference: the mirror's BatchNorms folded into the next layers give the same probabilities."""

import pytest
import torch
from torch import nn

from product_cnn.inference.bn_fold import fold_batchnorm
from product_cnn.models.mirror import KerasCNN
from product_cnn.models.networks import build_network


def _trained_looking(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine parameters, as after training."""
    torch.manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.3, 3)
            m.weight.data.uniform_(0.2, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return net.eval()


@pytest.mark.parametrize("negative_scale", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_folded_network_gives_the_same_probabilities(negative_scale, channels_last):
    net = _trained_looking(KerasCNN(num_classes=5, image_size=96))
    if negative_scale:  # a channel whose BatchNorm does not commute with max-pooling
        net.features[2].weight.data[3] = -0.7
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    folded = fold_batchnorm(net)
    remaining = [type(m).__name__ for m in folded.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    # folded wherever exact, except the last one: "none of these" reads the classifier layer's input
    assert remaining == (["BatchNorm2d", "BatchNorm1d"] if negative_scale else ["BatchNorm1d"])
    x = torch.rand(3, 3, 96, 96)
    with torch.no_grad():
        expected, got = net(x).softmax(1), folded(x).softmax(1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert net.features[2].__class__ is nn.BatchNorm2d  # the original is not changed


def test_other_networks_are_left_as_they_are():
    net = build_network("mobilenet_v3_small", num_classes=3).eval()
    folded = fold_batchnorm(net)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x))
