"""A list of ``(path, label)`` photos as a torch Dataset of uint8 tensors (decoded, or from the cache)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from product_cnn.data.cache import DecodedImageCache
from product_cnn.data.folder import Sample
from product_cnn.data.images import ImageSize, load_image


class ImageListDataset(Dataset):
    """``(uint8 image tensor (3, H, W), label)`` for a list of ``(path, label)`` samples.

    With a :class:`DecodedImageCache` the tensors come from it instead of the image files.
    ``with_index=True`` adds the sample's index: ``(image, label, index)``, so that per-photo
    results can be traced back to their file.
    """

    def __init__(self, samples: list[Sample], image_size: ImageSize = 256,
                 *, cache: DecodedImageCache | None = None, with_index: bool = False,
                 decode: str = "reduced") -> None:
        self.samples = samples
        self.image_size = image_size
        self.decode = decode
        self.cache = cache
        self.with_index = with_index
        if cache is not None:
            position = {path: i for i, path in enumerate(cache.paths)}
            self.cache_index = [position[path] for path, _ in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | tuple[torch.Tensor, int, int]:
        path, label = self.samples[index]
        if self.cache is not None:
            image = self.cache[self.cache_index[index]]
        else:
            image = load_image(path, self.image_size, decode=self.decode)
        return (image, label, index) if self.with_index else (image, label)
