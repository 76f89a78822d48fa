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

from product_cnn.errors import CheckpointError, ProductCNNError
from product_cnn.models.checkpoint import CheckpointInfo, checkpoint_info, read_checkpoint
from product_cnn.models.networks import build_network, check_fits


@dataclass
class LoadedNetwork:
    """A checkpoint's network (eval mode, CPU, fp32) and what the checkpoint says about it."""

    net: nn.Module
    info: CheckpointInfo


def load_network(path: str | Path) -> LoadedNetwork:
    """Read ``path`` safely (no pickled code runs) and rebuild its network, or raise
    :class:`CheckpointError` in one line."""
    name = f"checkpoint {path}"
    checkpoint = read_checkpoint(path)
    info = checkpoint_info(checkpoint)
    try:  # the weights come from the checkpoint: nothing to download or read for the backbone
        net = build_network(info.arch, len(info.class_names), info.image_size, dropout=info.dropout,
                            flip=info.flip_features)
    except (TypeError, ValueError, ProductCNNError) as err:
        raise CheckpointError(f"{name} does not describe a network: {err}") from None
    state = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    check_fits(net.state_dict(), state, name, info.arch)
    net.load_state_dict(state)
    if info.channels_last:  # as training ran it: NHWC convolutions, 2-3x faster in bf16 on CPU
        net.to(memory_format=torch.channels_last)
    return LoadedNetwork(net.eval(), info)
