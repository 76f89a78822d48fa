"""Which network computed a cached feature: a key over its architecture, weights, input size and
decoding (:class:`~product_cnn.data.feature_cache.FeatureCache` files are named by it)."""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

FEATURES_VERSION = 1  # bump when the way features are computed changes


def network_key(net: nn.Module, image_size: Any, decode: str = "reduced") -> str:
    """A short hash of the network's architecture, every backbone tensor, the input size and
    how photos are decoded."""
    digest = hashlib.sha256(f"{FEATURES_VERSION}\0{getattr(net, 'arch', type(net).__name__)}\0"
                            f"{image_size}\0{decode}".encode())
    for name, tensor in net.backbone.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]
