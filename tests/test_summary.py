"""The model summary: parameters counted as Keras does, FLOPs of one image, one line in the log."""

import logging

import lightning as L
import pytest

from product_cnn.module import ProductClassifier
from product_cnn.summary import KerasCountSummary, ModelSummary


def _forward_flops(size: int, classes: int = 5) -> int:
    """Multiply-adds x 2 of the mirror's convolutions and dense layers, from its shapes."""
    conv1 = size - 5
    conv2 = conv1 // 2 - 2
    features = 16 * (conv2 // 2) ** 2
    macs = conv1 * conv1 * 64 * 6 * 6 * 3 + conv2 * conv2 * 16 * 3 * 3 * 64
    macs += features * 64 + 64 * 16 + 16 * classes
    return 2 * macs


def test_summary_counts_batchnorm_statistics_and_flops_per_image():
    model = ProductClassifier(num_classes=5, image_size=256)
    summary = KerasCountSummary(model, max_depth=1)
    assert summary.total_parameters == 3_828_341  # the Keras summary's total
    assert summary.trainable_parameters == 3_828_021
    assert summary.total_parameters - summary.trainable_parameters == 320  # BatchNorm mean/var
    assert summary.total_flops == _forward_flops(256)
    assert summary.total_flops / 1e9 == pytest.approx(1.16, abs=0.01)
    assert summary.param_nums[0] == 3_828_341  # the "net" row includes its statistics


def test_summary_callback_logs_the_totals(caplog, tree_factory):
    from product_cnn.data.datamodule import ProductDataModule

    dm = ProductDataModule(str(tree_factory({"Bags": 6, "Cups": 6})), image_size=32, batch_size=4)
    model = ProductClassifier(class_names=["Bags", "Cups"], image_size=32)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=1, limit_val_batches=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        callbacks=[ModelSummary()])
    with caplog.at_level(logging.INFO, logger="product_cnn.summary"):
        trainer.fit(model, datamodule=dm)
    line = next(r.getMessage() for r in caplog.records if r.name == "product_cnn.summary")
    total = KerasCountSummary(model, max_depth=1).total_parameters
    assert f"Model KerasCNN: {total:,} parameters" in line and "320 non-trainable" in line
    assert f"{_forward_flops(32, 2) / 1e9:.3f} GFLOP per 32x32 image" in line
