import math

import pytest
import torch
from torch import nn

from product_cnn.models.mirror import KERAS_BN_EPS, KERAS_BN_MOMENTUM, KerasCNN, feature_map_size


def test_parameter_counts_match_the_keras_summary():
    model = KerasCNN()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    running_stats = sum(
        b.numel() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var"))
    )
    assert trainable == 3_828_021
    assert running_stats == 320
    assert trainable + running_stats == 3_828_341


def test_per_layer_output_shapes_match_the_keras_summary():
    model = KerasCNN().eval()
    shapes = {}
    layers = {
        "conv1": model.features[0], "pool1": model.features[3],
        "conv2": model.features[4], "pool2": model.features[7],
        "flatten": model.flatten, "dense1": model.classifier[0],
        "dense2": model.classifier[4], "dense3": model.classifier[8],
    }
    for name, layer in layers.items():
        layer.register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[1:])))
    with torch.no_grad():
        model(torch.rand(2, 3, 256, 256))
    assert shapes == {
        "conv1": (64, 251, 251), "pool1": (64, 125, 125),
        "conv2": (16, 123, 123), "pool2": (16, 61, 61),
        "flatten": (59536,), "dense1": (64,), "dense2": (16,), "dense3": (5,),
    }


def test_keras_layer_order_activation_before_batchnorm():
    kinds = [type(m) for m in KerasCNN().features]
    assert kinds == [nn.Conv2d, nn.ReLU, nn.BatchNorm2d, nn.MaxPool2d] * 2


def test_keras_initialisation_and_batchnorm_settings():
    torch.manual_seed(0)
    model = KerasCNN()
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            assert torch.count_nonzero(module.bias) == 0
            receptive = module.weight[0, 0].numel() if module.weight.dim() > 2 else 1
            fan_in, fan_out = module.weight.shape[1] * receptive, module.weight.shape[0] * receptive
            bound = math.sqrt(6 / (fan_in + fan_out))
            assert module.weight.abs().max() <= bound
            # uniform(-b, b) has std b/sqrt(3); a default PyTorch init (kaiming) would differ
            assert module.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            assert module.eps == KERAS_BN_EPS == 1e-3
            assert module.momentum == KERAS_BN_MOMENTUM == 0.01


def test_forward_and_backward_reach_every_parameter():
    torch.manual_seed(0)
    model = KerasCNN(num_classes=5, image_size=64)
    logits = model(torch.rand(4, 3, 64, 64))
    assert logits.shape == (4, 5) and torch.isfinite(logits).all()
    nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name


def test_input_size_and_classes_are_configuration():
    model = KerasCNN(num_classes=3, image_size=128)
    assert feature_map_size(128) == (29, 29)
    assert model.classifier[0].in_features == 16 * 29 * 29
    assert model.eval()(torch.rand(1, 3, 128, 128)).shape == (1, 3)
    assert feature_map_size((256, 128)) == (61, 29)


def test_too_small_input_or_one_class_is_refused():
    with pytest.raises(ValueError, match="too small"):
        KerasCNN(image_size=10)
    with pytest.raises(ValueError, match="at least 2"):
        KerasCNN(num_classes=1)
