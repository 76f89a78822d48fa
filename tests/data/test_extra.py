"""data.extra: photos from anywhere added to the training split with their labels, checked in one
line before training, recorded in the config, checkpoint and data table; the files untouched."""


import pytest
import torch

from product_cnn.data.datamodule import ProductDataModule
from product_cnn.errors import DataError
from product_cnn.tasks import train
from tests.helpers import FAST, PALETTE, compose_cfg, snapshot, write_image


def _write(path, rows):
    path.write_text("path,label,verdict\n" + "".join(f"{p},{label},unsure\n" for p, label in rows))
    return path


@pytest.fixture
def reviewed(tmp_path):
    """Photos outside the data root (as predict.py's review.csv lists them) and the CSV."""
    outside = tmp_path / "inbox"
    outside.mkdir()
    for i in range(3):
        write_image(outside / f"new_{i}.jpg", PALETTE[1], seed=500 + i)  # Cups-coloured
    write_image(outside / "junk.jpg", PALETTE[0], seed=600)
    rows = [(outside / "new_0.jpg", "Cups"), ("inbox/new_1.jpg", "Cups"), (outside / "new_2.jpg", "Pens"),
            (outside / "junk.jpg", "exclude")]
    csv = _write(tmp_path / "review.csv", rows)
    return outside, csv


def test_extra_photos_join_the_training_split_as_labelled(tree_factory, reviewed):
    root, (outside, csv) = tree_factory({"Bags": 10, "Cups": 10, "Pens": 10}), reviewed
    before = snapshot(root) | snapshot(outside)
    plain = ProductDataModule(str(root), image_size=32, batch_size=4)
    plain.setup("fit")
    dm = ProductDataModule(str(root), image_size=32, batch_size=4, extra=str(csv))
    dm.setup("fit")
    added = {str(outside / "new_0.jpg"): "Cups", str(outside / "new_1.jpg"): "Cups",
             str(outside / "new_2.jpg"): "Pens"}  # the relative path read from the CSV's folder
    train = {p: dm.class_names[y] for p, y in dm.split_samples["train"]}
    assert {p: train[p] for p in added} == added
    assert set(train) - set(added) == {p for p, _ in plain.split_samples["train"]}
    assert dm.split_samples["val"] == plain.split_samples["val"]  # validation and test unchanged
    assert dm.split_samples["test"] == plain.split_samples["test"]
    assert f"extra {csv}: 3 photo(s) added to training, 1 skipped" in dm.describe()
    assert dm.state_dict()["extra"]["labels"] == added
    images, _ = next(iter(dm.train_dataloader()))  # they load like the others
    assert images.dtype == torch.uint8
    assert snapshot(root) | snapshot(outside) == before  # nothing moved or rewritten


def test_extra_is_recorded_in_the_config_and_the_checkpoint(tree_factory, reviewed, tmp_path):
    root, (_, csv) = tree_factory({"Bags": 10, "Cups": 10, "Pens": 10}), reviewed
    cfg = compose_cfg("train", [*FAST, "data=folder", f"data.root={root}", f"data.extra={csv}",
                                "trainer.max_epochs=1", "test=false"], tmp_path / "run", tmp_path / "cache")
    train(cfg)
    ckpt = next((tmp_path / "run" / "checkpoints").glob("epoch_*.ckpt"))
    saved = torch.load(ckpt, weights_only=True)
    assert saved["datamodule_hyper_parameters"]["extra"] == str(csv)
    assert len(saved["ProductDataModule"]["extra"]["labels"]) == 3


@pytest.mark.parametrize(("row", "message"), [
    (("inbox/missing.jpg", "Cups"), "line 2: inbox/missing.jpg is not a file"),
    (("inbox/new_0.jpg", "Mugs"), "line 2: label 'Mugs' is not a class (Bags, Cups, Pens) or exclude"),
    (("inbox/notes.txt", "Cups"), "line 2: inbox/notes.txt is not an image file"),
    (("inbox/broken.jpg", "Cups"), "line 2: "),
    (("ROOT", "Cups"), "is already one of the data set's photos"),
])
def test_a_bad_row_fails_in_one_line_before_training(tree_factory, reviewed, tmp_path, row, message):
    root, (outside, _) = tree_factory({"Bags": 10, "Cups": 10, "Pens": 10}), reviewed
    (outside / "notes.txt").write_text("not a photo")
    (outside / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    path = str(next(root.glob("Bags/*.jpg"))) if row[0] == "ROOT" else row[0]
    csv = _write(tmp_path / "bad.csv", [(path, row[1])])
    dm = ProductDataModule(str(root), image_size=32, batch_size=4, extra=str(csv))
    with pytest.raises(DataError, match=r"data\.extra=") as err:
        dm.setup("fit")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_missing_file_or_conflicting_rows_are_refused(tree_factory, reviewed, tmp_path):
    root, (outside, _) = tree_factory({"Bags": 10, "Cups": 10, "Pens": 10}), reviewed
    with pytest.raises(DataError, match="no such file"):
        ProductDataModule(str(root), image_size=32, extra=str(tmp_path / "nope.csv")).setup("fit")
    twice = _write(tmp_path / "twice.csv", [(outside / "new_0.jpg", "Cups"), (outside / "new_0.jpg", "Pens")])
    with pytest.raises(DataError, match=r"line 3: .* listed twice with different labels"):
        ProductDataModule(str(root), image_size=32, extra=str(twice)).setup("fit")
