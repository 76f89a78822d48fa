"""The photos of a shard folder as prediction inputs: ``predict.py inputs=<shards>`` classifies every
item of every split, named by its photo's path in ``<split>.csv``."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from product_cnn.data.images import ImageSize, image_hw, load_array
from product_cnn.data.streaming.location import exists, join
from product_cnn.data.streaming.manifest import MANIFEST, read_manifest, read_samples
from product_cnn.errors import DataError, ImageLoadError


def is_shards(location: Any, storage_options: dict[str, Any] | None = None) -> bool:
    """True when ``location`` (a predict.py input) is a folder or prefix of finished shards."""
    if not isinstance(location, str) or any(c in location for c in "*?["):
        return False
    return exists(join(location, MANIFEST), storage_options)


def item_array(item: dict[str, Any], store: str, *, image_size: int, decode: str, name: str) -> np.ndarray:
    """The ``(3, H, W)`` uint8 image of a stored item: its photo file decoded exactly as
    ``data=folder`` decodes it (``store="bytes"``), or a copy of the stored image (litdata hands out
    read-only views)."""
    if store == "bytes":
        return load_array(np.asarray(item["image"]).tobytes(), image_size, name=name, decode=decode)
    return np.array(item["image"])


class _Split:
    """One split's litdata dataset (random access, one reader at a time) and its photo names."""

    def __init__(self, location: str, split: str, class_names: list[str],
                 storage_options: dict[str, Any] | None) -> None:
        from litdata import StreamingDataset

        self.dataset = StreamingDataset(join(location, split), storage_options=storage_options or {})
        self.names = [path for path, _ in read_samples(location, split, class_names, storage_options)]
        self.lock = threading.Lock()

    def item(self, position: int) -> dict[str, Any]:
        with self.lock:
            return self.dataset[position]


class ShardPhoto:
    """One shard item; it decodes itself (``load_array``) and is named by its photo's path once read."""

    def __init__(self, split: _Split, position: int, store: str, label: str) -> None:
        self.split, self.position, self.store = split, position, store
        self.name = f"{label}#{position}"  # until read: the split and the item's position

    def __str__(self) -> str:
        return self.name

    def load_array(self, size: ImageSize, decode: str) -> np.ndarray:
        item = self.split.item(self.position)
        self.name = self.split.names[int(item["index"])]
        image = item_array(item, self.store, image_size=size, decode=decode, name=self.name)
        if self.store == "image" and tuple(image.shape[1:]) != image_hw(size):
            raise ImageLoadError(self.name, f"the shards hold {image.shape[2]}x{image.shape[1]} images, the "
                                            f"model takes {image_hw(size)[1]}x{image_hw(size)[0]}: make "
                                            "shards at its size, or with store=bytes")
        return image


def shard_photos(location: str, storage_options: dict[str, Any] | None = None, *,
                 image_size: ImageSize | None = None) -> Sequence[ShardPhoto]:
    """Every item of the shards at ``location`` (train, val, test), in shard order; refused in one
    line when they hold images of another size than ``image_size`` (the model's; ``store=bytes``
    items are decoded at it)."""
    manifest = read_manifest(location, storage_options)
    side = image_hw(image_size) if image_size is not None else None
    if side is not None and manifest.store == "image" and image_hw(manifest.image_size) != side:
        raise DataError(f"the shards in {location} hold {manifest.image_size}x{manifest.image_size} images, "
                        f"the model takes {side[1]}x{side[0]}: make shards at its size, or with store=bytes")
    photos: list[ShardPhoto] = []
    for split in manifest.splits:
        reader = _Split(location, split, manifest.class_names, storage_options)
        photos += [ShardPhoto(reader, i, manifest.store, split) for i in range(len(reader.dataset))]
    return photos


def photo_inputs(inputs: Any, image_size: ImageSize | None = None) -> Sequence[Any]:
    """predict.py's ``inputs``: files, folders and glob patterns
    (:func:`~product_cnn.data.folder.expand_inputs`), or a folder of shards (prepare_data.py, checked
    against the model's ``image_size``), whose items decode themselves."""
    from product_cnn.data.folder import expand_inputs

    if isinstance(inputs, str) and is_shards(inputs):
        return shard_photos(inputs, image_size=image_size)
    return expand_inputs(inputs)
