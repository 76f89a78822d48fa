"""Which network computed a cached feature: a key over its architecture, weights, input size and
decoding (:class:`~product_cnn.data.feature_cache.FeatureCache` files are named by it)."""

from __future__ import annotations

import hashlib
from pathlib import Path
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


def cached_features(net: nn.Module, paths: list[str], cache_dir: str | Path, image_size: Any,
                    decode: str = "reduced") -> torch.Tensor | None:
    """``(len(paths), D)``: the features ``net`` computes for these photos (each member's side by
    side, as its head sees them), read from the feature cache; None unless every one is there."""
    from product_cnn.data.feature_cache import FeatureCache

    parts = []
    for member in getattr(net, "members", None) or [net]:
        cache = FeatureCache(cache_dir, network_key(member, image_size, decode))
        keys = [cache.photo_key(p) for p in paths]
        if not paths or any(k not in cache.entries for k in keys):
            return None
        parts.append(torch.stack([cache.entries[k] for k in keys]))
    return torch.cat(parts, dim=1)
