"""Pooled network features per photo, cached on disk like the decoded images: one file per network
(``<cache_dir>/features/<network key>.pt``), one entry per photo (path, size, mtime). The probe and
the same-photo check read it; a second run, or the next fold, computes only what it has not seen."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from product_cnn.atomic import atomic_path
from product_cnn.data.cache import fingerprint

log = logging.getLogger(__name__)


class FeatureCache:
    """Pooled backbone features per photo, in ``<cache_dir>/features/<network key>.pt``."""

    def __init__(self, cache_dir: str | Path, key: str) -> None:
        self.path = Path(cache_dir) / "features" / f"{key}.pt"
        self.entries: dict[str, torch.Tensor] = {}
        if self.path.is_file():
            try:
                self.entries = dict(torch.load(self.path, map_location="cpu", weights_only=True))
            except Exception:  # a damaged cache is recomputed, never trusted
                log.warning("Feature cache %s cannot be read: recomputing it", self.path)
        self.hits = self.misses = 0

    @staticmethod
    def photo_key(path: str) -> str:
        return fingerprint([path], "features")

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            torch.save(self.entries, tmp)
