import pytest
import torch

from product_cnn.data.datamodule import ProductDataModule
from product_cnn.errors import DataError


def _dm(root, **kw) -> ProductDataModule:
    dm = ProductDataModule(str(root), image_size=32, batch_size=4, **kw)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_flat_tree_is_split_by_us(tree_factory):
    root = tree_factory({"Bags": 10, "Cups": 10, "Pens": 10})
    dm = _dm(root)
    assert dm.class_names == ["Bags", "Cups", "Pens"]
    assert dm.counts() == {"train": [7, 7, 7], "val": [2, 2, 2], "test": [1, 1, 1]}
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.uint8
    images, labels = dm.on_after_batch_transfer((images, labels), 0)
    assert images.dtype == torch.float32 and images.min() >= 0 and images.max() <= 1
    # each label's images really come from that class folder
    for path, label in dm.split_samples["val"]:
        assert f"/{dm.class_names[label]}/" in path


def test_presplit_tree_is_used_as_given(tree_factory):
    root = tree_factory({"Bags": 10, "Cups": 5}, layout="presplit")
    dm = _dm(root)
    assert dm.class_names == ["Bags", "Cups"]
    assert dm.counts() == {"train": [6, 3], "val": [2, 1], "test": [2, 1]}
    assert all("/test/" in p for p, _ in dm.split_samples["test"])
    assert "Bags" in dm.summary() and "total" in dm.summary()


def test_presplit_without_val_carves_it_from_train(tree_factory, tmp_path):
    root = tree_factory({"Bags": 10, "Cups": 10}, layout="presplit")
    (root / "val").rename(tmp_path / "moved_val")
    dm = _dm(root)
    assert all("/train/" in p for p, _ in dm.split_samples["val"])
    assert sum(dm.counts()["val"]) > 0 and sum(dm.counts()["test"]) == 4
    train, val = {p for p, _ in dm.split_samples["train"]}, {p for p, _ in dm.split_samples["val"]}
    assert not train & val


def test_non_images_and_hidden_files_are_ignored(tree_factory):
    root = tree_factory({"Bags": 5, "Cups": 5})
    (root / "Bags" / "notes.txt").write_text("x")
    (root / "Bags" / ".DS_Store").write_text("x")
    (root / "__MACOSX").mkdir()
    dm = _dm(root)
    assert dm.class_names == ["Bags", "Cups"]
    assert dm.photos.tree.ignored == [str(root / "Bags" / "notes.txt")]
    assert sum(sum(c) for c in dm.counts().values()) == 10


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"data root .*nowhere does not exist"):
        _dm(tmp_path / "nowhere")


def test_empty_class_folder_is_named(tree_factory):
    root = tree_factory({"Bags": 5, "Cups": 5})
    (root / "Empty").mkdir()
    with pytest.raises(DataError, match=r"no images: .*Empty"):
        _dm(root)


def test_single_class_tree_is_refused(tree_factory):
    root = tree_factory({"Bags": 5})
    with pytest.raises(DataError, match=r"only one class folder \(Bags\)"):
        _dm(root)


def test_images_without_class_folders_are_explained(tmp_path):
    from tests.helpers import write_image

    write_image(tmp_path / "loose" / "a.jpg", (1, 2, 3), 0)
    with pytest.raises(DataError, match=r"found 1 images directly in it"):
        _dm(tmp_path / "loose")


def test_a_training_batch_of_one_is_dropped(tree_factory):
    root = tree_factory({"Bags": 10, "Cups": 10, "Pens": 10})  # 21 train images
    dm = ProductDataModule(str(root), image_size=32, batch_size=4)
    dm.setup("fit")
    assert [len(b[1]) for b in dm.train_dataloader()] == [4] * 5  # not [4]*5 + [1]
    assert sum(len(b[1]) for b in dm.val_dataloader()) == 6  # evaluation keeps every image


def test_root_is_recorded_absolute(tree_factory, monkeypatch):
    root = tree_factory({"Bags": 5, "Cups": 5})
    monkeypatch.chdir(root.parent)
    dm = ProductDataModule("photos")
    assert dm.hparams.root == str(root)


@pytest.mark.shared_data
def test_real_photos_scan_and_split(shared_slash5):
    dm = ProductDataModule(str(shared_slash5))
    dm.setup("fit")
    assert dm.class_names == ["Accessories", "Artifacts", "Fashion", "Home", "Stationary"]
    totals = [sum(c) for c in zip(*dm.counts().values(), strict=True)]
    assert totals == [84, 28, 172, 128, 65]
    assert all(n > 0 for split in dm.counts().values() for n in split)
