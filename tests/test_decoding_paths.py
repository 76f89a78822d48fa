"""Every path from a photo file to the network decodes it the one way the checkpoint records
(data.decode): training with and without the cache, predict, an exported model, the server."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import JpegImagePlugin

from product_cnn.data.datamodule import ProductDataModule
from product_cnn.data.for_checkpoint import data_for_checkpoint
from product_cnn.inference.predictor import Predictor
from product_cnn.models.checkpoint import checkpoint_info, read_checkpoint


@pytest.fixture
def drafts(monkeypatch) -> list:
    """The (requested size) of every reduced-scale JPEG decode (Pillow's Image.draft) made."""
    calls: list = []
    real = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        calls.append(size)
        return real(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    return calls


def _photos(tiny_run) -> list[str]:
    return sorted(str(p) for p in tiny_run["root"].rglob("*.jpg"))


@pytest.mark.parametrize("cache", [True, False])
def test_training_decodes_reduced(tree_factory, tmp_path, drafts, cache):
    root = tree_factory({"Bags": 6, "Cups": 6})
    dm = ProductDataModule(str(root), image_size=32, batch_size=4, cache=cache, check=False,
                           cache_dir=str(tmp_path / "c"))
    dm.setup("fit")
    next(iter(dm.train_dataloader()))
    assert drafts and set(drafts) == {(32, 32)}


def test_predict_export_and_server_decode_as_the_checkpoint_says(tiny_run, tmp_path, drafts):
    from product_cnn.inference.export import export
    from product_cnn.inference.exported import ExportedPredictor
    from product_cnn.serve.backends import model_info
    from product_cnn.serve.uploads import decode_photos

    checkpoint = read_checkpoint(tiny_run["best"])
    assert checkpoint_info(checkpoint).decode == "reduced"  # recorded by training
    photos = _photos(tiny_run)[:4]
    Predictor.from_checkpoint(tiny_run["best"], device="cpu").predict(photos)
    assert len(drafts) == 4
    pytest.importorskip("onnxruntime")
    onnx = export(tiny_run["best"], "onnx", tmp_path / "m.onnx")
    ExportedPredictor(onnx).predict(photos)
    assert len(drafts) == 8
    for info in (model_info("torch", str(tiny_run["best"]), None), model_info("onnx", None, str(onnx))):
        assert info.decode == "reduced"
        decode_photos([("a.jpg", Path(photos[0]).read_bytes())], info.image_size, False, info.decode)
    assert len(drafts) == 10 and set(drafts) == {(64, 64)}


def test_a_checkpoint_trained_on_fully_decoded_photos_predicts_that_way(tiny_run, tmp_path, drafts):
    checkpoint = read_checkpoint(tiny_run["best"])
    checkpoint["datamodule_hyper_parameters"].pop("decode")  # as checkpoints before data.decode
    torch.save(checkpoint, tmp_path / "old.ckpt")
    predictor = Predictor.from_checkpoint(tmp_path / "old.ckpt", device="cpu")
    assert predictor.decode == "full"
    predictor.predict(_photos(tiny_run)[:3])
    assert drafts == []
    info = checkpoint_info(checkpoint)
    dm = data_for_checkpoint(info.data, image_size=info.image_size, decode=info.decode,
                             class_names=info.class_names)
    assert dm.hparams.decode == "full"
