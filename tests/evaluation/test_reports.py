import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from product_cnn.atomic import write_text
from product_cnn.evaluation.reports import REPORT_FILES, build_report, format_classification_report


def test_report_files_after_a_run(tiny_run):
    run = tiny_run["run"]
    for name in REPORT_FILES:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    report = json.loads((run / "metrics.json").read_text())
    assert report["class_names"] == ["Bags", "Cups", "Pens"]
    confmat = report["confusion_matrix"]
    # 20 images per class, 10% test each: 6 test images in all
    assert sum(map(sum, confmat)) == report["split_sizes"]["test"] == report["num_samples"] == 6
    assert report["accuracy"] == pytest.approx(tiny_run["metrics"]["test/acc"])
    assert report["macro"]["f1"] == pytest.approx(tiny_run["metrics"]["test/f1"])
    assert report["data_root"] == str(tiny_run["root"])
    assert report["checkpoint"].endswith(".ckpt")
    for i, name in enumerate(report["class_names"]):
        row = report["per_class"][name]
        tp, support, predicted = confmat[i][i], sum(confmat[i]), sum(r[i] for r in confmat)
        assert row["support"] == support
        assert row["recall"] == pytest.approx(tp / support if support else 0)
        assert row["precision"] == pytest.approx(tp / predicted if predicted else 0)
    text = (run / "classification_report.txt").read_text()
    assert all(name in text for name in ("Bags", "Cups", "Pens", "macro avg", "weighted avg"))


def test_the_report_gives_the_calibration_and_the_operating_points(tiny_run):
    import csv

    import torch

    from product_cnn.confidence.coverage import coverage_table
    from product_cnn.confidence.temperature import calibration_error

    run = tiny_run["run"]
    section = json.loads((run / "metrics.json").read_text())["confidence"]
    rows = list(csv.DictReader((run / "test_predictions.csv").open()))
    names = ["Bags", "Cups", "Pens"]
    probs = torch.tensor([[float(r[f"prob_{n}"]) for n in names] for r in rows])
    raw = torch.tensor([[float(r[f"raw_prob_{n}"]) for n in names] for r in rows])
    labels = torch.tensor([names.index(r["label"]) for r in rows])
    from product_cnn.models.checkpoint import read_checkpoint

    assert section["calibrated_on"] == "validation split (12 photos)"
    assert section["temperature"] == read_checkpoint(tiny_run["best"])["confidence"]["temperature"]
    assert section["ece_before"] == pytest.approx(calibration_error(raw, labels), abs=1e-5)
    assert section["ece_after"] == pytest.approx(calibration_error(probs, labels), abs=1e-5)
    confidence, predicted = probs.max(1)
    expected = coverage_table(confidence, predicted == labels)
    assert [(r["threshold"], r["count"]) for r in section["coverage"]] == [(r["threshold"], r["count"])
                                                                           for r in expected]
    assert [p["target_accuracy"] for p in section["operating_points"]] == [0.98, 0.95]
    assert len(section["heldout_operating_points"]) == 2
    text = (run / "classification_report.txt").read_text()
    assert "Calibration: expected calibration error" in text and "accuracy, " in text
    for name in ("calibration.png", "coverage.png"):
        assert (run / name).stat().st_size > 5000


def test_tensorboard_has_figures_and_hparams(tiny_run):
    events = EventAccumulator(str(tiny_run["run"] / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert {"val/confusion_matrix", "test/predictions", "test/calibration", "test/coverage"} <= set(
        events.Tags()["images"])
    assert len(events.Images("val/confusion_matrix")) == 2  # one per epoch, none from the sanity check
    assert {"train/loss", "val/acc", "test/acc"} <= set(events.Tags()["scalars"])
    plugins = set(events.PluginTagToContent("hparams"))
    assert "_hparams_/session_start_info" in plugins


def test_classification_report_table_uses_names():
    import torch

    confmat = torch.tensor([[3, 1], [0, 4]])
    computed = {
        "acc": torch.tensor(7 / 8), "confmat": confmat,
        "precision_none": torch.tensor([1.0, 0.8]), "recall_none": torch.tensor([0.75, 1.0]),
        "f1_none": torch.tensor([0.857, 0.889]),
        **{f"{m}_{a}": torch.tensor(0.5)
           for m in ("precision", "recall", "f1") for a in ("macro", "weighted")},
    }
    report = build_report(computed, ["Mugs", "Hats"])
    table = format_classification_report(report)
    assert table.splitlines()[2].split() == ["Mugs", "1.0000", "0.7500", "0.8570", "4"]
    assert report["per_class"]["Hats"]["support"] == 4


def test_atomic_write_never_leaves_half_a_file(tmp_path):
    target = tmp_path / "metrics.json"
    write_text(target, "old")

    from product_cnn import atomic

    with pytest.raises(KeyboardInterrupt), atomic.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


@pytest.mark.parametrize(("share", "steps"), [(1.0, [0, 1, 2, 3]), (0.0, [0, 3])])
def test_confusion_figure_keeps_to_its_time_share_and_draws_the_last_epoch(
        tree_factory, tmp_path, share, steps):
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    from product_cnn.data.datamodule import ProductDataModule
    from product_cnn.evaluation.callbacks import ValConfusionMatrixFigure
    from product_cnn.training.module import ProductClassifier

    dm = ProductDataModule(str(tree_factory({"Bags": 10, "Cups": 10})), image_size=32, batch_size=8)
    dm.setup("fit")
    trainer = L.Trainer(accelerator="cpu", max_epochs=4, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False,
                        logger=TensorBoardLogger(tmp_path, name="", version=""),
                        callbacks=[ValConfusionMatrixFigure(max_time_share=share)])
    trainer.fit(ProductClassifier(class_names=dm.class_names, image_size=32), datamodule=dm)
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    # share 0: the first epoch (nothing drawn yet) and the last one (drawn at the end of fit)
    assert [image.step for image in events.Images("val/confusion_matrix")] == steps


def test_the_prediction_grid_captions_each_photo_and_marks_the_wrong_ones_red():
    import numpy as np
    import torch

    from product_cnn.evaluation.callbacks import prediction_grid

    grey = torch.full((3, 40, 60), 0.5)
    items = [(grey, 0, 0, 0.9)] * 9 + [(grey, 0, 1, 0.6)]  # the tenth is wrong
    grid = np.asarray(prediction_grid(items, ["Bags", "Cups"], cols=8, tile=100))
    assert grid.shape == (2 * 140, 8 * 100, 3)
    red = (grid[..., 0] > 200) & (grid[..., 1] < 80) & (grid[..., 2] < 80)
    assert not red[:140].any()  # the first row is all right
    assert red[140:176, 100:200].any() and not red[140:176, :100].any()  # only the wrong photo's caption
    assert (np.abs(grid[140 + 36 + 46, 150].astype(int) - 128) <= 1).all()  # the photo, centred in its tile
