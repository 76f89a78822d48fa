"""The Keras-style model summary: the original's layers, shapes and counts; FLOPs of one image."""

import logging
import subprocess
import sys

import lightning as L
import pytest

from product_cnn.models.mirror import KerasCNN
from product_cnn.models.networks import build_network
from product_cnn.models.summary import format_summary, summarize_network
from product_cnn.training.model_summary import ModelSummary
from product_cnn.training.module import ProductClassifier
from tests.helpers import REPO

# The summary in the original write-up (its code block's layers: a second Flatten, both Dropouts)
ORIGINAL = [
    ("conv2d", "Conv2D", (None, 251, 251, 64), 6976),
    ("batch_normalization", "BatchNormalization", (None, 251, 251, 64), 256),
    ("max_pooling2d", "MaxPooling2D", (None, 125, 125, 64), 0),
    ("conv2d_1", "Conv2D", (None, 123, 123, 16), 9232),
    ("batch_normalization_1", "BatchNormalization", (None, 123, 123, 16), 64),
    ("max_pooling2d_1", "MaxPooling2D", (None, 61, 61, 16), 0),
    ("flatten", "Flatten", (None, 59536), 0),
    ("dense", "Dense", (None, 64), 3810368),
    ("batch_normalization_2", "BatchNormalization", (None, 64), 256),
    ("dropout", "Dropout", (None, 64), 0),
    ("flatten_1", "Flatten", (None, 64), 0),
    ("dense_1", "Dense", (None, 16), 1040),
    ("batch_normalization_3", "BatchNormalization", (None, 16), 64),
    ("dropout_1", "Dropout", (None, 16), 0),
    ("dense_2", "Dense", (None, 5), 85),
]


def _forward_flops(size: int, classes: int = 5) -> int:
    """Multiply-adds x 2 of the mirror's convolutions and dense layers, from its shapes."""
    conv1 = size - 5
    conv2 = conv1 // 2 - 2
    features = 16 * (conv2 // 2) ** 2
    macs = conv1 * conv1 * 64 * 6 * 6 * 3 + conv2 * conv2 * 16 * 3 * 3 * 64
    macs += features * 64 + 64 * 16 + 16 * classes
    return 2 * macs


def test_the_mirror_reads_like_the_original_keras_summary():
    summary = summarize_network(KerasCNN(), 256)
    assert [(r.name, r.kind, r.shape, r.params) for r in summary.rows] == ORIGINAL
    assert (summary.total, summary.trainable, summary.non_trainable) == (3_828_341, 3_828_021, 320)
    assert summary.flops == _forward_flops(256)
    text = format_summary(summary)
    assert "Total params: 3828341 (14.60 MB)" in text and "Non-trainable params: 320 (1.25 KB)" in text
    assert " batch_normalization (Batch  (None, 251, 251, 64)      256" in text  # wrapped like Keras


def test_other_networks_get_the_table_of_their_own_modules():
    net = build_network("mobilenet_v3_small", num_classes=3)
    summary = summarize_network(net, 96)
    names = [r.name for r in summary.rows]
    assert names[0] == "normalize" and names[-1] == "head" and "backbone.features" in names
    assert summary.rows[-1].shape == (None, 3)
    assert sum(r.params for r in summary.rows) == summary.total  # every parameter in some row
    assert summary.flops > 0


def test_the_callback_logs_the_table(caplog, tree_factory):
    from product_cnn.data.datamodule import ProductDataModule

    dm = ProductDataModule(str(tree_factory({"Bags": 6, "Cups": 6})), image_size=32, batch_size=4)
    model = ProductClassifier(class_names=["Bags", "Cups"], image_size=32)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=1, limit_val_batches=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        callbacks=[ModelSummary()])
    with caplog.at_level(logging.INFO, logger="product_cnn.training.model_summary"):
        trainer.fit(model, datamodule=dm)
    text = "\n".join(r.getMessage() for r in caplog.records if r.name == "product_cnn.training.model_summary")
    assert "Non-trainable params: 320" in text and "dense_2 (Dense)" in text
    assert f"Forward FLOPs per 32x32 image: {_forward_flops(32, 2) / 1e9:.3f} G" in text


@pytest.mark.parametrize("model", ["cnn", "resnet18"])
def test_summary_only_prints_the_table_and_trains_nothing(model, tmp_path, tree_factory):
    root = tree_factory({"Bags": 3, "Cups": 3, "Pens": 3})
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), "data=folder", f"data.root={root}",
                           f"model={model}", "+summary_only=true", f"hydra.run.dir={tmp_path}/out"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Total params:" in proc.stdout and "Layer (type)" in proc.stdout
    assert ("dense_2 (Dense)             (None, 3)" in proc.stdout) == (model == "cnn")
    assert not (tmp_path / "out" / "checkpoints").exists()
