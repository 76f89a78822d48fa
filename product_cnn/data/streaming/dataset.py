"""One split of the shards as a litdata ``StreamingDataset``
of ``(uint8 image (3, H, W), label[, index])``."""

from __future__ import annotations

from typing import Any

import torch
from litdata import StreamingDataset

from product_cnn.data.streaming.photos import item_array


class ShardDataset(StreamingDataset):
    """litdata streams the items (each rank and worker its own part, shuffled per epoch when
    ``shuffle``); this turns one into what :class:`~product_cnn.data.dataset.ImageListDataset` gives.

    ``store="bytes"`` items hold the photo file, decoded here exactly as ``data=folder`` decodes it;
    ``store="image"`` items are already the resized uint8 image. ``with_index`` adds the item's
    index in ``<split>.csv`` (per-photo reports)."""

    def __init__(self, input_dir: str, store: str, *, image_size: int, decode: str = "reduced",
                 with_index: bool = False, **streaming: Any) -> None:
        # batch_decode: litdata decodes a window of neighbouring items per read, which a shuffled
        # order throws away (46x the deserialising, 600 vs 8,000 photos/s: docs/scaling.md)
        streaming.setdefault("batch_decode", False)
        super().__init__(input_dir, **streaming)
        if self.shuffle:
            # litdata's POSIX fast path gives each rank the same chunks every epoch and shuffles only
            # within a sliding window of 16 items; training wants its general one: chunks permuted
            # across ranks and items within chunks every epoch (as data=folder reshuffles everything)
            self.posix_fast = None
        self.store, self.image_size, self.decode, self.with_index = store, image_size, decode, with_index

    def __getitem__(self, index: Any) -> tuple[torch.Tensor, int] | tuple[torch.Tensor, int, int]:
        item = super().__getitem__(index)
        image = item_array(item, self.store, image_size=self.image_size, decode=self.decode,
                           name=f"shard item {item['index']}")
        tensor = torch.from_numpy(image)
        if self.with_index:
            return tensor, int(item["label"]), int(item["index"])
        return tensor, int(item["label"])
