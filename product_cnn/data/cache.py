"""Decoded-image cache: decode, orient, convert and resize each photo once, keep uint8 tensors.

The cache is one raw file of ``N x 3 x H x W`` uint8 images under ``<cache_dir>/decoded/``,
named by a fingerprint of the file list (paths, sizes, modification times) and the
preprocessing (image size, preprocessing version, Pillow version): a changed, added or removed
photo gives a new fingerprint, so a stale cache is never used. It is written to a temporary
file and renamed into place, with a JSON sidecar holding a checksum; a file that does not match
its checksum is detected and rebuilt. Two runs over the same photos share it. It is loaded into
memory when it fits under ``memory_limit`` bytes, and memory-mapped otherwise.

Size: ``N * 3 * H * W`` bytes, i.e. 196,608 bytes (192 KiB) per image at 256x256.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import PIL

from product_cnn.atomic import atomic_path, write_text
from product_cnn.data.images import PREPROCESS_VERSION, ImageSize, check_decode, image_hw, load_image

if TYPE_CHECKING:  # torch only where a tensor is made: default_cache_dir() is used without it
    import torch

log = logging.getLogger(__name__)

_CHUNK = 1 << 24  # checksum in 16 MiB reads


def default_cache_dir() -> str:
    """``$PRODUCT_CNN_CACHE`` when set and not empty, else ``~/.cache/product-cnn``."""
    return os.environ.get("PRODUCT_CNN_CACHE") or str(Path("~/.cache/product-cnn").expanduser())


def fingerprint(paths: Sequence[str], settings: Any) -> str:
    """A short hash of the files (path, size, mtime), the preprocessing and ``settings`` (JSON-able)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([PREPROCESS_VERSION, PIL.__version__, settings]).encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def _checksum(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class DecodedImageCache:
    """uint8 image tensors for ``paths`` (in that order), decoded once and stored on disk."""

    def __init__(self, paths: Sequence[str], image_size: ImageSize, *, cache_dir: str | Path,
                 memory_limit: int = 4 << 30, workers: int | None = None, decode: str = "reduced") -> None:
        self.paths = list(paths)
        self.shape = (3, *image_hw(image_size))
        self.decode = check_decode(decode)
        self.key = fingerprint(self.paths, [*self.shape[1:], self.decode])
        self.file = Path(cache_dir).expanduser() / "decoded" / f"{self.key}.u8"
        self.meta_file = self.file.with_suffix(".json")
        self.workers = workers or min(8, os.cpu_count() or 1)
        self.array = self._load() if self._valid() else self._build()
        if self.nbytes <= memory_limit and isinstance(self.array, np.memmap):
            self.array = np.array(self.array)  # fits: read it into memory once
        self.in_memory = not isinstance(self.array, np.memmap)

    @property
    def nbytes(self) -> int:
        return len(self.paths) * int(np.prod(self.shape))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        import torch

        # a copy: callers may change it in place (augmentation) without touching the cache
        return torch.from_numpy(np.array(self.array[index]))

    def _valid(self) -> bool:
        if not self.file.is_file() or not self.meta_file.is_file():
            return False
        try:
            meta = json.loads(self.meta_file.read_text())
        except (OSError, ValueError):
            meta = {}
        if self.file.stat().st_size == self.nbytes and meta.get("checksum") == _checksum(self.file):
            return True
        log.warning("Decoded-image cache %s is damaged or incomplete: rebuilding it", self.file)
        return False

    def _decode_into(self, out: np.memmap) -> None:
        def decode(index: int) -> None:
            out[index] = load_image(self.paths[index], self.shape[1:], decode=self.decode).numpy()

        with ThreadPoolExecutor(self.workers) as pool:  # Pillow decodes without holding the GIL
            for _ in pool.map(decode, range(len(self.paths))):
                pass
        out.flush()

    def _load(self) -> np.memmap:
        log.info("Using decoded-image cache %s (%d images)", self.file, len(self.paths))
        return np.memmap(self.file, dtype=np.uint8, mode="r", shape=(len(self.paths), *self.shape))

    def _build(self) -> np.memmap:
        log.info("Decoding %d images once into %s (%.0f MiB)", len(self.paths), self.file,
                 self.nbytes / 2**20)
        with atomic_path(self.file) as tmp:
            self._decode_into(np.memmap(tmp, dtype=np.uint8, mode="w+", shape=(len(self.paths), *self.shape)))
            checksum = _checksum(tmp)
        write_text(self.meta_file, json.dumps({
            "checksum": checksum, "count": len(self.paths), "shape": list(self.shape),
            "preprocess_version": PREPROCESS_VERSION, "pillow": PIL.__version__, "decode": self.decode,
        }) + "\n")
        return self._load()
