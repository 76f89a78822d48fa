"""Data checks: every kind of bad file, near-duplicate leakage, class balance, augmentation."""

from __future__ import annotations

import io
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from product_cnn.data.check import check_tree, duplicate_groups, inspect_image
from product_cnn.data.datamodule import ProductDataModule
from product_cnn.data.folder import scan_tree
from product_cnn.data.images import load_image, to_unit_float
from product_cnn.data.samplers import EpochWeightedSampler
from product_cnn.data.split import stratified_split
from product_cnn.errors import DataError
from tests.helpers import NO_SAME_PHOTO, REPO, make_tree


def _jpeg_bytes(color=(200, 30, 30), size=(64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "JPEG")
    return buffer.getvalue()


def _good_and_bad(folder: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Write every kind of file; return {name: expected colour check} and {name: reason part}."""
    folder.mkdir(parents=True, exist_ok=True)
    good, bad = {}, {}
    Image.new("RGBA", (40, 30), (0, 0, 255, 0)).save(folder / "rgba.png")  # transparent -> white
    good["rgba.png"] = "white"
    Image.new("RGB", (40, 30), (0, 200, 0)).convert("P").save(folder / "palette.png")
    good["palette.png"] = "green"
    Image.fromarray(np.full((30, 40), 65535, dtype=np.uint16)).save(folder / "sixteen.png")
    good["sixteen.png"] = "white"
    Image.new("L", (40, 30), 0).save(folder / "gray.jpg")
    good["gray.jpg"] = "black"
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(folder / "cmyk.jpg")  # red in CMYK
    good["cmyk.jpg"] = "red"
    # EXIF orientation 6 (rotate 90 degrees clockwise to view): stored left half -> top half
    pixels = np.zeros((40, 80, 3), np.uint8)
    pixels[:, :40] = (255, 0, 0)
    pixels[:, 40:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(folder / "rotated.jpg", exif=exif, quality=95)
    good["rotated.jpg"] = "red-top"

    data = _jpeg_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    bad["truncated.jpg"] = "corrupt or truncated"
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    bad["corrupt.jpg"] = ""
    (folder / "empty.jpg").write_bytes(b"")
    bad["empty.jpg"] = "empty file (0 bytes)"
    (folder / "notes.jpg").write_text("this is a text file, not a photo\n")
    bad["notes.jpg"] = "not an image file PIL can read"
    Image.new("1", (10000, 10000)).save(folder / "huge.png")  # 100 Mpx: a decompression bomb
    bad["huge.png"] = "too many pixels"
    return good, bad


def test_every_kind_of_file_loads_or_is_refused_by_name(tmp_path):
    good, bad = _good_and_bad(tmp_path / "mixed")
    colours = {"white": (1, 1, 1), "green": (0, 200 / 255, 0), "black": (0, 0, 0), "red": (1, 0, 0)}
    for name, expect in good.items():
        image = to_unit_float(load_image(tmp_path / "mixed" / name, 256))
        assert image.shape == (3, 256, 256) and image.min() >= 0 and image.max() <= 1, name
        if expect == "red-top":  # upright: red on top, blue below
            assert image[0, 20:100].mean() > 0.9 and image[2, 20:100].mean() < 0.1
            assert image[2, 160:240].mean() > 0.9 and image[0, 160:240].mean() < 0.1
        else:
            centre = image[:, 128, 128]
            expected = torch.tensor(colours[expect], dtype=torch.float32)
            assert torch.allclose(centre, expected, atol=0.05), (name, centre)
    for name, reason in bad.items():
        info = inspect_image(str(tmp_path / "mixed" / name))
        assert info.error is not None, name
        assert reason in info.error, (name, info.error)


def test_bad_files_stop_training_before_the_first_epoch_or_are_skipped(tree_factory, tmp_path):
    root = tree_factory({"Bags": 8, "Cups": 8, "Pens": 8})
    _, bad = _good_and_bad(root / "Bags")
    dm = ProductDataModule(str(root), image_size=32, batch_size=4)
    with pytest.raises(DataError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert f"{len(bad)} of " in message and "data.skip_bad_images=true" in message
    assert str(root / "Bags") in message

    dm = ProductDataModule(str(root), image_size=32, batch_size=4, skip_bad_images=True)
    dm.setup("fit")
    used = {Path(p).name for samples in dm.split_samples.values() for p, _ in samples}
    assert not used & set(bad)
    assert {Path(i.path).name for i in dm.photos.check.bad} == set(bad)
    for split in ("train", "val", "test"):  # every remaining photo decodes
        images, *_ = next(iter(dm._loader(split, shuffle=False)))
        assert images.shape[1:] == (3, 32, 32)


def _product(rng: np.random.Generator) -> np.ndarray:
    pixels = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
    return np.kron(pixels, np.ones((8, 8, 1), np.uint8))  # a blocky 48x64 "product"


def _near_duplicate_tree(root: Path, per_class: int = 12, twice: int = 6,
                         seed: int = 0) -> list[tuple[str, str]]:
    """Two classes; the first ``twice`` products of each photographed twice (re-encoded, resized)."""
    pairs = []
    rng = np.random.default_rng(seed)
    for cls in ("Bags", "Cups"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = _product(rng)
            first = root / cls / f"p{i:02d}_a.jpg"
            Image.fromarray(pixels).save(first, quality=95)
            if i < twice:
                second = root / cls / f"p{i:02d}_b.png"
                Image.fromarray(pixels).resize((70, 52)).save(second)
                pairs.append((str(first), str(second)))
    return pairs


def test_near_duplicates_are_found_and_never_split_apart(tmp_path):
    root = tmp_path / "shop"
    pairs = _near_duplicate_tree(root)
    tree = scan_tree(root)
    check = check_tree(tree, tmp_path / "cache")
    assert sorted(map(sorted, pairs)) == check.groups  # exactly the planted pairs
    for seed in range(20):
        splits = stratified_split(tree.splits["all"], tree.class_names, str(root), seed=seed,
                                  groups=check.groups)
        where = {p: s for s, samples in splits.items() for p, _ in samples}
        assert all(where[a] == where[b] for a, b in pairs), seed
        assert all(splits[s] for s in splits)
    # without grouping, some seed puts a pair on both sides (the leak the grouping prevents)
    leaks = 0
    for seed in range(20):
        splits = stratified_split(tree.splits["all"], tree.class_names, str(root), seed=seed)
        where = {p: s for s, samples in splits.items() for p, _ in samples}
        leaks += sum(where[a] != where[b] for a, b in pairs)
    assert leaks > 0


def test_presplit_leakage_is_reported(tmp_path, caplog):
    root = tmp_path / "shop"
    pairs = _near_duplicate_tree(root / "train", per_class=8, twice=2)
    _near_duplicate_tree(root / "val", per_class=3, twice=0, seed=1)
    _near_duplicate_tree(root / "test", per_class=3, twice=0, seed=2)
    kept, leaked = pairs[0]
    Path(leaked).rename(root / "test" / "Bags" / Path(leaked).name)
    dm = ProductDataModule(str(root), image_size=32, batch_size=4)
    dm.setup("fit")
    assert len(dm.photos.check.leaks) == 1
    leak = str(root / "test" / "Bags" / Path(leaked).name)
    assert dm.photos.check.leaks[0] == {"train": [kept], "test": [leak]}
    assert "Near-duplicates in several splits (leakage)" in caplog.text


def test_duplicate_groups_chain_and_ignore_unreadable():
    from product_cnn.data.check import ImageInfo

    zero = "00" * 32
    one_bit = "80" + "00" * 31
    far = "ff" * 32
    infos = [ImageInfo("a", dhash=zero, sha256="1"), ImageInfo("b", dhash=one_bit, sha256="2"),
             ImageInfo("c", dhash=far, sha256="3"), ImageInfo("d", dhash=far, sha256="1"),
             ImageInfo("e", error="corrupt")]
    assert duplicate_groups(infos) == [["a", "b", "c", "d"]]  # d = a by bytes, d ~ c by hash


def test_class_weights_and_sampler_use_inverse_frequency(tree_factory):
    root = tree_factory({"Bags": 40, "Cups": 10, "Pens": 20})
    dm = ProductDataModule(str(root), image_size=32, batch_size=8, balance="sampler")
    dm.setup("fit")
    train = dm.counts()["train"]
    expected = torch.tensor([sum(train) / (3 * n) for n in train])
    assert torch.allclose(dm.class_weights(), expected)
    assert dm.class_weights()[1] > dm.class_weights()[2] > dm.class_weights()[0]
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, EpochWeightedSampler)
    labels = []
    for epoch in range(60):
        loader.sampler.set_epoch(epoch)
        labels += [dm.split_samples["train"][i][1] for i in loader.sampler]
    share = Counter(labels)
    for label in range(3):  # balanced draws: about a third each (the data is 57/14/29%)
        assert abs(share[label] / len(labels) - 1 / 3) < 0.03, share
    loader.sampler.set_epoch(1)
    first = list(loader.sampler)
    assert first == list(loader.sampler)  # reproducible per epoch


def test_weighted_loss_reaches_the_model(train_cfg, tree_factory):
    from product_cnn.tasks import train

    root = tree_factory({"Bags": 16, "Cups": 8, "Pens": 8})
    cfg = train_cfg("data=folder", f"data.root={root}", "data.balance=weighted_loss", "trainer.max_epochs=1",
                    "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1")
    train(cfg)
    ckpt = next(Path(cfg.paths.output_dir, "checkpoints").glob("*.ckpt"))
    weights = torch.load(ckpt, weights_only=True)["hyper_parameters"]["class_weights"]
    # train split 11/5/5 (16 -> 11/3/2, 8 -> 5/2/1): weight n / (3 * n_c)
    assert weights == pytest.approx([21 / 33, 21 / 15, 21 / 15], rel=1e-5)


@pytest.mark.parametrize("augment", ["light", "strong"])
def test_augmentation_changes_training_batches_only(tree_factory, augment):
    root = tree_factory({"Bags": 10, "Cups": 10})
    dm = ProductDataModule(str(root), image_size=32, batch_size=4, augment=augment)
    dm.setup("fit")
    # the loaders hand out the plain cached photos; augmentation happens per batch on the device
    val = dm.dataset("val")
    assert torch.equal(val[0][0], load_image(val.samples[0][0], 32))
    same = torch.stack([dm.dataset("train")[0][0]] * 8)
    torch.manual_seed(0)
    a = dm.augment_batch(same)
    assert a.shape == same.shape and a.dtype == torch.uint8
    assert len({bytes(img.numpy()) for img in a}) > 1  # a new draw for every photo of the batch
    assert not torch.equal(a, dm.augment_batch(same))  # and a new one every time
    torch.manual_seed(0)
    assert torch.equal(a, dm.augment_batch(same))  # drawn from the seeded global generator

    class Training:  # what on_after_batch_transfer looks at
        training = True

    batch = [same, torch.zeros(8, dtype=torch.long)]
    dm.trainer = None
    assert torch.equal(dm.on_after_batch_transfer(batch, 0)[0], same.float() / 255)
    dm.trainer = Training()
    torch.manual_seed(0)
    assert torch.equal(dm.on_after_batch_transfer(batch, 0)[0], a.float() / 255)
    dm.trainer.training = False  # validation and test batches are left as they are
    assert torch.equal(dm.on_after_batch_transfer(batch, 0)[0], same.float() / 255)


def test_unknown_balance_or_augment_is_refused(tree_factory):
    root = tree_factory({"Bags": 10, "Cups": 10})
    with pytest.raises(DataError, match=r"data\.balance=.oversample. is not one of"):
        ProductDataModule(str(root), balance="oversample")
    with pytest.raises(DataError, match=r"data\.augment=.heavy. is not one of"):
        ProductDataModule(str(root), augment="heavy")


def test_check_data_cli_prints_the_summary_and_fails_on_bad_files(tmp_path):
    root = make_tree(tmp_path / "photos", {"Bags": 10, "Cups": 10})
    (root / "Cups" / "broken.jpg").write_bytes(b"")
    proc = subprocess.run(
        [sys.executable, str(REPO / "check_data.py"), "data=folder", f"data.root={root}", NO_SAME_PHOTO,
         f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'out'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    out = proc.stdout
    assert "Bags" in out and "total" in out and "sizes:" in out and "modes: RGB 20" in out
    assert f"{root / 'Cups' / 'broken.jpg'}: empty file (0 bytes)" in out
    assert "near-duplicates: 0 group(s)" in out
