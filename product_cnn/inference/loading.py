"""A checkpoint's network for inference, built without the training stack.

Lightning, torchmetrics and the optimizers take seconds to import; classifying photos needs
none of them: the network (:func:`product_cnn.models.networks.build_network`), its weights, the
class names, the image size, the decoding and the confidence card are all in the checkpoint.
Training and ``eval.py`` rebuild the whole ``ProductClassifier`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from product_cnn.confidence.card import ConfidenceCard
from product_cnn.data.images import ImageSize, checkpoint_decode
from product_cnn.errors import CheckpointError, ProductCNNError
from product_cnn.models.networks import MIRROR, build_network, check_fits
from product_cnn.training.checkpoint import read_checkpoint


@dataclass
class LoadedNetwork:
    """A checkpoint's network (eval mode, CPU, fp32) and what inference needs with it."""

    net: nn.Module
    arch: str
    class_names: list[str]
    image_size: ImageSize
    decode: str
    card: ConfidenceCard | None

    @property
    def temperature(self) -> float:
        """The fitted temperature (1 until calibrated)."""
        return self.card.temperature if self.card is not None else 1.0


def load_network(path: str | Path) -> LoadedNetwork:
    """Read ``path`` safely (no pickled code runs) and rebuild its network, or raise
    :class:`CheckpointError` in one line."""
    name = f"checkpoint {path}"
    checkpoint = read_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters") or {}
    names = hparams.get("class_names")
    names = list(names) if names else [str(i) for i in range(hparams.get("num_classes", 5))]
    image_size = hparams.get("image_size", 256)
    arch = hparams.get("arch", MIRROR)
    try:  # the weights come from the checkpoint: nothing to download or read for the backbone
        net = build_network(arch, len(names), image_size, hparams.get("dropout", 0.1))
    except (TypeError, ValueError, ProductCNNError) as err:
        raise CheckpointError(f"{name} does not describe a network: {err}") from None
    state = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    check_fits(net.state_dict(), state, name, arch)
    net.load_state_dict(state)
    if hparams.get("channels_last"):  # as training ran it: NHWC convolutions, 2-3x faster in bf16 on CPU
        net.to(memory_format=torch.channels_last)
    return LoadedNetwork(net.eval(), arch, names, image_size, checkpoint_decode(checkpoint),
                         ConfidenceCard.from_dict(checkpoint.get("confidence")))
