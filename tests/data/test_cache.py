"""The decoded-image cache: same tensors as decoding, invalidated by changes, shared, self-healing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import product_cnn.data.cache as cache_mod
from product_cnn.data.cache import DecodedImageCache
from product_cnn.data.datamodule import ProductDataModule
from product_cnn.data.folder import scan_tree
from product_cnn.data.images import load_image


def _paths(root: Path) -> list[str]:
    return sorted(p for p, _ in scan_tree(str(root)).splits["all"])


@pytest.fixture
def photos(tree_factory) -> list[str]:
    root = tree_factory({"Bags": 4, "Cups": 4})
    # add awkward modes too: RGBA PNG, palette, grayscale
    Image.new("RGBA", (30, 50), (10, 200, 30, 90)).save(root / "Bags" / "rgba.png")
    Image.new("RGB", (40, 20), (200, 10, 10)).convert("P").save(root / "Cups" / "palette.png")
    Image.new("L", (25, 25), 77).save(root / "Cups" / "gray.jpg")
    return _paths(root)


def test_cache_gives_the_same_tensors_as_decoding(photos, tmp_path):
    cache = DecodedImageCache(photos, 32, cache_dir=tmp_path / "c")
    assert len(cache) == len(photos) and cache.in_memory
    for i, path in enumerate(photos):
        got = cache[i]
        assert got.dtype == torch.uint8 and got.shape == (3, 32, 32)
        assert torch.equal(got, load_image(path, 32)), path
    assert cache.file.stat().st_size == len(photos) * 3 * 32 * 32 == cache.nbytes


def test_memory_mapped_when_over_the_memory_limit(photos, tmp_path):
    cache = DecodedImageCache(photos, 32, cache_dir=tmp_path / "c", memory_limit=0)
    assert not cache.in_memory
    assert torch.equal(cache[3], load_image(photos[3], 32))


def test_second_run_reuses_the_cache_without_decoding(photos, tmp_path, monkeypatch):
    first = DecodedImageCache(photos, 32, cache_dir=tmp_path / "c")

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although a valid cache exists")

    monkeypatch.setattr(cache_mod, "load_image", no_decoding)
    second = DecodedImageCache(photos, 32, cache_dir=tmp_path / "c")
    assert second.file == first.file
    assert all(torch.equal(first[i], second[i]) for i in range(len(photos)))


def test_changed_photo_invalidates_the_cache(photos, tmp_path):
    before = DecodedImageCache(photos, 32, cache_dir=tmp_path / "c")
    target = photos[0]
    Image.new("RGB", (48, 40), (0, 0, 255)).save(target)
    stat = os.stat(target)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # mtime surely differs
    after = DecodedImageCache(photos, 32, cache_dir=tmp_path / "c")
    assert after.key != before.key
    assert torch.equal(after[0], load_image(target, 32))
    assert not torch.equal(after[0], before[0])
    # other settings are part of the key as well
    assert DecodedImageCache(photos, 16, cache_dir=tmp_path / "c").key != after.key
    assert DecodedImageCache(photos[1:], 32, cache_dir=tmp_path / "c").key != after.key


def test_corrupt_cache_file_is_detected_and_rebuilt(photos, tmp_path, caplog):
    first = DecodedImageCache(photos, 32, cache_dir=tmp_path / "c")
    with open(first.file, "r+b") as f:  # flip bytes in the middle of the data
        f.seek(first.nbytes // 2)
        f.write(bytes(64))
    rebuilt = DecodedImageCache(photos, 32, cache_dir=tmp_path / "c")
    assert "damaged" in caplog.text
    assert all(torch.equal(rebuilt[i], load_image(p, 32)) for i, p in enumerate(photos))
    # a truncated file (a killed build) is rebuilt too
    with open(first.file, "r+b") as f:
        f.truncate(100)
    again = DecodedImageCache(photos, 32, cache_dir=tmp_path / "c")
    assert torch.equal(again[len(photos) - 1], load_image(photos[-1], 32))


def test_datamodule_batches_equal_with_and_without_cache(tree_factory, tmp_path):
    root = tree_factory({"Bags": 6, "Cups": 6, "Pens": 6})
    batches = {}
    for cache in (True, False):
        dm = ProductDataModule(str(root), image_size=32, batch_size=64, cache=cache,
                               cache_dir=str(tmp_path / "c"))
        dm.prepare_data()
        dm.setup("fit")
        assert (dm.cache is not None) == cache
        batches[cache] = next(iter(dm.val_dataloader()))
    assert torch.equal(batches[True][0], batches[False][0])
    assert torch.equal(batches[True][1], batches[False][1])
    assert np.prod(batches[True][0].shape) > 0


def test_the_decoding_method_is_part_of_the_cache_key(tmp_path):
    from tests.data.test_images import _photo

    photos = [str(_photo(tmp_path / f"{i}.jpg", (640, 480))) for i in range(2)]
    reduced = DecodedImageCache(photos, 64, cache_dir=tmp_path / "c")
    full = DecodedImageCache(photos, 64, cache_dir=tmp_path / "c", decode="full")
    assert reduced.key != full.key and reduced.file.is_file() and full.file.is_file()
    assert torch.equal(full[0], load_image(photos[0], 64, decode="full"))
    assert torch.equal(reduced[0], load_image(photos[0], 64))
    assert not torch.equal(reduced[0], full[0])
