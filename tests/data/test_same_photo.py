"""The same photo in another crop: grouped by pretrained features, kept in one fold."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw, ImageOps

from product_cnn.data.catalogue import PhotoCatalogue
from product_cnn.data.images import open_image, to_rgb
from product_cnn.data.same_photo import merge_groups, similar_groups
from product_cnn.errors import ProductCNNError


def test_groups_link_photos_through_their_closest_views():
    a, b, c = torch.eye(3)
    features = torch.stack([torch.stack([a, b]),  # photo 0: whole = a, crop = b
                            torch.stack([c, b + 0.01 * c]),  # photo 1: its whole photo is photo 0's crop
                            torch.stack([c * -1, a * -1])])  # photo 2: like nothing
    assert similar_groups(["p0", "p1", "p2"], features, 0.99) == [["p0", "p1"]]
    assert similar_groups(["p0", "p1", "p2"], features[:, :1], 0.99) == []  # the whole photos alone differ
    assert merge_groups([["a", "b"]], [["b", "c"], ["d", "e"]]) == [["a", "b", "c"], ["d", "e"]]


def test_a_bad_threshold_is_one_line():
    from product_cnn.models.same_photo import SamePhotoFinder

    with pytest.raises(ProductCNNError, match=r"data.same_photo.threshold=1.5 must be in \(0, 1\]"):
        SamePhotoFinder(threshold=1.5)
    with pytest.raises(ProductCNNError, match=r"data.same_photo.arch=resnet9: one of tf_efficientnet_lite0"):
        SamePhotoFinder(arch="resnet9")


def _copies(image: Image.Image) -> dict[str, Image.Image]:
    w, h = image.size
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).rounded_rectangle((0, 0, w - 1, h - 1), radius=int(0.12 * min(w, h)), fill=255)
    return {"crop": image.crop((int(0.1 * w), int(0.1 * h), int(0.9 * w), int(0.9 * h))),
            "zoom": image.crop((int(0.2 * w), int(0.2 * h), int(0.8 * w), int(0.8 * h))).resize((w, h)),
            "bars": ImageOps.expand(image, border=(int(0.15 * w), int(0.15 * h)), fill=(0, 0, 0)),
            "corners": Image.composite(image, Image.new("RGB", (w, h), (255, 255, 255)), mask),
            "small": image.resize((w // 2, h // 2))}


def test_planted_copies_land_in_their_photos_fold_and_other_photos_do_not_all_merge(shared_slash5,
                                                                                      tmp_path):
    from product_cnn.models.same_photo import SamePhotoFinder

    finder = SamePhotoFinder()
    if not finder.available():
        pytest.skip("needs the EfficientNet-Lite0 weights package (the pretrained extra)")
    root = tmp_path / "photos"
    originals = {}
    for folder in sorted(p for p in shared_slash5.iterdir() if p.is_dir()):
        for photo in sorted(folder.glob("*.jpg"))[:8]:  # copies in a scratch tree: slash5 is untouched
            target = root / folder.name / photo.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(photo, target)
            originals[str(target)] = folder.name
    planted = {}
    for original in list(originals)[::8]:  # one photo per class gets five copies
        with open_image(original) as image:
            rgb = to_rgb(image).copy()
        for kind, copy in _copies(rgb).items():
            path = Path(original).with_name(f"{Path(original).stem}_{kind}.jpg")
            copy.save(path, quality=40 if kind == "small" else 90)
            planted[str(path)] = original
    options = dict(folds=5, fold=0, val_fraction=0.0, cache_dir=str(tmp_path / "cache"))
    grouped = PhotoCatalogue(root, same_photo=finder, **options).load()
    fold = grouped.fold_of(5)
    assert all(fold[copy] == fold[original] for copy, original in planted.items())
    merged = [g for g in grouped.groups if len([p for p in g if p in originals]) > 1]
    assert sum(map(len, merged)) < len(originals) // 4  # different photos mostly stay apart
    hashed = PhotoCatalogue(root, same_photo=None, **options).load()  # the difference hash alone
    apart = hashed.fold_of(5)
    assert any(apart[copy] != apart[original] for copy, original in planted.items())
    report = grouped.check_report(show_groups=3)
    assert "same photo in another crop (tf_efficientnet_lite0 features, cosine >= 0.9)" in report


def test_the_finder_decodes_a_new_photo_once_for_all_its_crops_and_reads_the_rest_from_the_cache(
        tree_factory, tmp_path, monkeypatch):
    import product_cnn.models.same_photo as same_photo

    root = tree_factory({"Bags": 3, "Cups": 3})
    paths = sorted(str(p) for p in root.rglob("*.jpg"))
    decoded = []
    real = same_photo.load_image
    monkeypatch.setattr(same_photo, "load_image",
                        lambda path, *a, **k: decoded.append(path) or real(path, *a, **k))
    finder = same_photo.SamePhotoFinder(image_size=64, scales=(1.0, 0.6))
    first = finder.features(paths[:4], tmp_path / "cache")
    assert sorted(decoded) == paths[:4] and first.shape[:2] == (4, 2)
    decoded.clear()
    again = finder.features(paths, tmp_path / "cache")  # two new photos: only they are decoded
    assert sorted(decoded) == paths[4:]
    assert torch.equal(again[:4], first) and not torch.equal(again[:, 0], again[:, 1])
