"""The networks a model can be: the Keras mirror (``keras_cnn``, the default) or a torchvision one.

Every network takes a float batch ``(N, 3, H, W)`` in [0, 1] RGB and returns logits, so that
checkpoints, ``predict.py`` and exported models need nothing extra. A torchvision network is
wrapped as ``normalize -> backbone -> head``: the ImageNet normalisation its weights expect
lives inside it (constants, not weights), the backbone is torchvision's model with its last
linear layer taken out, and the head is a fresh linear layer for our classes. Pretrained
weights come from torchvision's weights API (``pretrained=True``: downloaded once into the
torch cache) or from a local state dict in torchvision's key layout (``weights_path``); either
way the backbone is loaded and the head replaced. Nothing here knows about Lightning.
"""

from __future__ import annotations

import logging
import urllib.error
from pathlib import Path

import torch
from torch import nn
from torchvision.models import get_model, get_model_weights

from product_cnn.data.images import ImageSize
from product_cnn.errors import CheckpointError, ProductCNNError
from product_cnn.model import KerasCNN

log = logging.getLogger(__name__)

MIRROR = "keras_cnn"
TORCHVISION = ("resnet18", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny")
ARCHITECTURES = (MIRROR, *TORCHVISION)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; constants, not saved in checkpoints."""

    def __init__(self, mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _last_linear(model: nn.Module) -> str:
    """The qualified name of the last ``nn.Linear`` of ``model``: torchvision's classifier layer."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no linear classifier layer")
    return names[-1]


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


class TorchvisionNet(nn.Module):
    """``normalize -> backbone -> head`` around a torchvision classification model."""

    def __init__(self, arch: str, num_classes: int, pretrained: bool = False,
                 weights_path: str | None = None) -> None:
        super().__init__()
        self.arch = arch
        self.normalize = Normalize()
        self.backbone = get_model(arch, weights=None)
        head_name = _last_linear(self.backbone)
        if weights_path:
            state = _read_state_dict(weights_path, arch)
            self._load_backbone(state, head_name, f"weights file {weights_path}")
        elif pretrained:
            self._load_backbone(_download(arch), head_name, f"torchvision's {arch} weights")
        in_features = self.backbone.get_submodule(head_name).in_features
        _set_module(self.backbone, head_name, nn.Identity())
        self.head = nn.Linear(in_features, num_classes)

    def _load_backbone(self, state: dict[str, torch.Tensor], head_name: str, what: str) -> None:
        expected = {k: v for k, v in self.backbone.state_dict().items() if not k.startswith(head_name + ".")}
        given = {k: v for k, v in state.items() if not k.startswith(head_name + ".")}
        missing = [k for k in expected if k not in given]
        unexpected = [k for k in given if k not in expected]
        wrong = [k for k in expected if k in given and tuple(given[k].shape) != tuple(expected[k].shape)]
        if missing or unexpected or wrong:
            first = (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}" if unexpected
                     else f"{wrong[0]} is {tuple(given[wrong[0]].shape)}, "
                          f"expected {tuple(expected[wrong[0]].shape)}")
            raise CheckpointError(f"{what} does not fit torchvision's {self.arch}: {first} "
                                  f"({len(missing)} missing, {len(unexpected)} unexpected, "
                                  f"{len(wrong)} of another shape)")
        self.backbone.load_state_dict(given, strict=False)
        log.info("Loaded %s into the %s backbone; new %s head", what, self.arch, "linear")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(self.normalize(x)))


def _read_state_dict(path: str | Path, arch: str) -> dict[str, torch.Tensor]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"model.weights_path={path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a torch file, pickled code (refused by weights_only)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"model.weights_path={path} cannot be read as a state dict: {reason}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"model.weights_path={path} is not a state dict (name -> tensor) for {arch}")
    return state


def _download(arch: str) -> dict[str, torch.Tensor]:
    """torchvision's default weights for ``arch``, from the torch cache or downloaded into it."""
    weights = get_model_weights(arch).DEFAULT
    target = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as err:
        reason = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise ProductCNNError(
            f"model.pretrained=true could not get {weights.url} ({reason}): on a machine without network, "
            f"download it elsewhere and put it at {target}, or pass model.weights_path=<that file>"
        ) from None


def build_network(arch: str = MIRROR, num_classes: int = 5, image_size: ImageSize = 256, dropout: float = 0.1,
                  pretrained: bool = False, weights_path: str | None = None) -> nn.Module:
    """The network called ``arch`` (see :data:`ARCHITECTURES`) with ``num_classes`` outputs."""
    if arch == MIRROR:
        if pretrained or weights_path:
            raise ProductCNNError("the Keras mirror (model=cnn) has no pretrained weights: "
                                  "choose a torchvision model, e.g. model=resnet18")
        return KerasCNN(num_classes=num_classes, image_size=image_size, dropout=dropout)
    if arch not in TORCHVISION:
        raise ProductCNNError(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    return TorchvisionNet(arch, num_classes, pretrained, weights_path)
