"""The fused first block (product_cnn/fused_block.py) against the ordinary layers."""

import copy

import pytest
import torch
from torch import nn

from product_cnn.models.fused_block import can_fuse
from product_cnn.models.mirror import KerasCNN
from product_cnn.training.bn_stats import EpochBatchNormStats


def _pair(dtype=torch.float32, channels_last=False, size=64):
    """(fused, layers): the same network twice, the second running its layers as they are."""
    torch.manual_seed(0)
    fused = KerasCNN(image_size=size, dropout=0.0).to(dtype)
    with torch.no_grad():  # BatchNorm scales away from 1 and from each other: a real test of the maths
        fused.features[2].weight.copy_(torch.linspace(0.3, 2.0, 64))
        fused.features[2].bias.copy_(torch.linspace(-0.5, 0.5, 64))
    layers = copy.deepcopy(fused)
    layers.fused_block = False
    if channels_last:
        fused.to(memory_format=torch.channels_last)
        layers.to(memory_format=torch.channels_last)
    return fused.train(), layers.train()


def _step(net, x, bf16=False):
    """Logits, parameter gradients and the state after one training forward/backward pass."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = net(x)
    nn.functional.cross_entropy(logits.float(), torch.arange(len(x)) % 5).backward()
    grads = {k: p.grad.double() for k, p in net.named_parameters()}
    return logits.detach().double(), grads, {k: v.clone() for k, v in net.state_dict().items()}


def _input(dtype=torch.float32, channels_last=False, size=64, n=6):
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1)).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def test_float64_equals_the_layers_to_rounding():
    fused, layers = _pair(torch.float64)
    x = _input(torch.float64)
    assert can_fuse(fused.features[1:4], fused.features[0](x))  # the fused path is the one tested
    (yf, gf, sf), (yl, gl, sl) = _step(fused, x), _step(layers, x)
    torch.testing.assert_close(yf, yl, rtol=1e-12, atol=1e-12)
    for k in gl:
        torch.testing.assert_close(gf[k], gl[k], rtol=1e-9, atol=1e-12, msg=k)
    assert sf.keys() == sl.keys()
    for k in sl:  # running statistics (unbiased variance) and num_batches_tracked, as BatchNorm updates them
        torch.testing.assert_close(sf[k], sl[k], rtol=1e-12, atol=1e-12, msg=k)
    assert int(sf["features.2.num_batches_tracked"]) == 1


@pytest.mark.parametrize("channels_last", [False, True])
def test_float32_equals_the_layers_within_float_tolerance(channels_last):
    fused, layers = _pair(torch.float32, channels_last)
    x = _input(torch.float32, channels_last)
    (yf, gf, sf), (yl, gl, sl) = _step(fused, x), _step(layers, x)
    torch.testing.assert_close(yf, yl, rtol=1e-4, atol=1e-5)
    for k in gl:  # relative to the largest entry: sums over many positions
        scale = gl[k].abs().max().item()
        torch.testing.assert_close(gf[k], gl[k], rtol=0, atol=1e-4 * scale, msg=k)
    for k in sl:
        torch.testing.assert_close(sf[k].double(), sl[k].double(), rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_is_as_close_to_float64_as_the_layers_are(channels_last):
    """In bf16 both differ from exact arithmetic; the fused block must not add error."""
    fused, layers = _pair(torch.float32, channels_last)
    gold_net = copy.deepcopy(layers).double()
    x = _input(torch.float32, channels_last, n=8)
    _, gold, _ = _step(gold_net, x.double())
    (yf, gf, _), (yl, gl, _) = _step(fused, x, bf16=True), _step(layers, x, bf16=True)
    torch.testing.assert_close(yf, yl, rtol=2e-2, atol=2e-2)
    for k in ("features.0.weight", "features.0.bias", "features.2.weight", "features.2.bias"):
        err_fused = ((gf[k] - gold[k]).norm() / gold[k].norm()).item()
        err_layers = ((gl[k] - gold[k]).norm() / gold[k].norm()).item()
        assert err_fused <= 1.1 * err_layers + 1e-3, (k, err_fused, err_layers)


def test_a_negative_batchnorm_scale_runs_the_layers_bit_for_bit():
    fused, layers = _pair()
    for net in (fused, layers):
        with torch.no_grad():
            net.features[2].weight[7] = -0.5  # max-pool would need a minimum here
    x = _input()
    assert not can_fuse(fused.features[1:4], fused.features[0](x))
    (yf, gf, _), (yl, gl, _) = _step(fused, x), _step(layers, x)
    assert torch.equal(yf, yl)
    assert all(torch.equal(gf[k], gl[k]) for k in gl)


def test_eval_mode_and_checkpoints_are_unchanged():
    fused, layers = _pair()
    x = _input()
    _step(fused, x)  # a training step, then swap the weights across
    layers.load_state_dict(fused.state_dict())
    assert fused.state_dict().keys() == KerasCNN(image_size=64, fused_block=False).state_dict().keys()
    with torch.no_grad():
        assert torch.equal(fused.eval()(x), layers.eval()(x))  # eval: the same layers run


def test_with_the_epoch_batchnorm_statistics_callback():
    """The callback sets momentum=1 and averages: the fused block reads the momentum each step."""
    fused, layers = _pair()
    for net in (fused, layers):
        callback = EpochBatchNormStats()
        callback.on_train_epoch_start(None, net)
        for i in range(3):
            _step(net, _input(n=4 + i))
            callback.on_train_batch_end(None, net, None, None, i)
    torch.testing.assert_close(fused.features[2].running_var, layers.features[2].running_var,
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused.features[2].running_mean, layers.features[2].running_mean,
                               rtol=1e-5, atol=1e-6)


def test_a_forward_hook_on_the_layers_sees_them_run():
    """Tools that hook a layer (activation statistics, feature extraction) get what they expect."""
    fused, _ = _pair()
    seen = []
    fused.features[2].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape))
    x = _input()
    assert not can_fuse(fused.features[1:4], fused.features[0](x))
    fused(x)
    assert seen == [torch.Size([6, 64, 59, 59])]
