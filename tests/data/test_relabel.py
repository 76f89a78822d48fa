"""data.relabel: corrections applied at scan time, recorded, checked in one line; photos untouched."""

import os

import pytest
import torch

from product_cnn.data.datamodule import ProductDataModule
from product_cnn.errors import DataError
from tests.helpers import snapshot


def _write(path, rows):
    path.write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label in rows))
    return path


def test_relabel_and_exclude_without_touching_the_files(tree_factory, tmp_path):
    root = tree_factory({"Bags": 10, "Cups": 10, "Pens": 10})
    before = snapshot(root)
    csv = _write(tmp_path / "fix.csv", [("Bags/img_000.jpg", "Cups"), ("Bags/img_001.jpg", "exclude"),
                                        (str(root / "Pens" / "img_002.jpg"), "Bags"),  # absolute path
                                        ("Cups/img_003.jpg", "Cups")])  # its own label: no change
    dm = ProductDataModule(str(root), image_size=32, batch_size=4, relabel=str(csv))
    dm.setup("fit")
    label_of = {os.path.relpath(p, root): dm.class_names[y] for s in dm.split_samples.values() for p, y in s}
    assert label_of["Bags/img_000.jpg"] == "Cups" and label_of["Pens/img_002.jpg"] == "Bags"
    assert "Bags/img_001.jpg" not in label_of and len(label_of) == 29
    assert [sum(c[i] for c in dm.counts().values()) for i in range(3)] == [9, 11, 9]
    assert "relabelled 2, excluded 1" in dm.describe()
    assert dm.state_dict()["relabel"]["relabelled"] == 2
    assert snapshot(root) == before  # nothing moved, renamed or rewritten


@pytest.mark.parametrize(("rows", "message"), [
    ([("Bags/nope.jpg", "Cups")], r"line 2: Bags/nope.jpg is not a file under"),
    ([("Bags/img_000.jpg", "Cups"), ("Bags/img_001.jpg", "Hats")], r"line 3: label 'Hats' is not a class"),
    ([("Bags/img_000.jpg", "Cups"), ("Bags/img_000.jpg", "Pens")], r"listed twice with different labels"),
])
def test_bad_rows_fail_in_one_line_before_training(tree_factory, tmp_path, rows, message):
    root = tree_factory({"Bags": 10, "Cups": 10, "Pens": 10})
    dm = ProductDataModule(str(root), image_size=32, relabel=str(_write(tmp_path / "bad.csv", rows)))
    with pytest.raises(DataError, match=message) as info:
        dm.setup("fit")
    assert "\n" not in str(info.value)
    assert dm.cache is None  # refused before any photo was decoded into the cache


def test_wrong_columns_and_missing_file(tree_factory, tmp_path):
    root = tree_factory({"Bags": 10, "Cups": 10})
    (tmp_path / "cols.csv").write_text("file,class\nBags/img_000.jpg,Cups\n")
    with pytest.raises(DataError, match="needs the columns path,label"):
        ProductDataModule(str(root), relabel=str(tmp_path / "cols.csv")).setup("fit")
    with pytest.raises(DataError, match="no such file"):
        ProductDataModule(str(root), relabel=str(tmp_path / "none.csv")).setup("fit")


def test_relabel_is_recorded_in_config_and_checkpoint(train_cfg, tree_factory, tmp_path):
    from pathlib import Path

    from product_cnn.tasks import train

    root = tree_factory({"Bags": 8, "Cups": 8, "Pens": 8})
    csv = _write(tmp_path / "fix.csv", [("Bags/img_000.jpg", "exclude"), ("Cups/img_001.jpg", "Pens")])
    cfg = train_cfg("data=folder", f"data.root={root}", f"data.relabel={csv}", "trainer.max_epochs=1",
                    "test=false")
    train(cfg)
    last = torch.load(Path(cfg.paths.output_dir, "checkpoints", "last.ckpt"), weights_only=True)
    assert last["datamodule_hyper_parameters"]["relabel"] == str(csv)
    record = last["ProductDataModule"]["relabel"]
    assert (record["relabelled"], record["excluded"]) == (1, 1)
    assert record["labels"] == {"Bags/img_000.jpg": "exclude", "Cups/img_001.jpg": "Pens"}
