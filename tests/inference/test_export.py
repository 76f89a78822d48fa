import json

import numpy as np
import pytest
import torch

from product_cnn.inference.export import export, load_for_export, sidecar_path
from product_cnn.inference.predictor import Predictor


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    return torch.rand(3, 3, 64, 64)


def _reference(ckpt, batch):
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    return predictor.probabilities(batch).numpy()


def test_onnx_export_matches_the_lightning_model(tiny_run, tmp_path, batch):
    ort = pytest.importorskip("onnxruntime")
    path = export(tiny_run["best"], "onnx", tmp_path / "model.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": batch.numpy()})[0]
    assert np.abs(got - _reference(tiny_run["best"], batch)).max() < 1e-4
    one = session.run(None, {"images": batch[:1].numpy()})[0]  # the batch size is dynamic
    assert one.shape == (1, 3)
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["class_names"] == ["Bags", "Cups", "Pens"] and meta["input"]["shape"] == ["N", 3, 64, 64]


def test_torchscript_export_matches_the_lightning_model(tiny_run, tmp_path, batch):
    path = export(tiny_run["best"], "torchscript", tmp_path / "model.pt")
    scripted = torch.jit.load(str(path))
    got = scripted(batch).detach().numpy()
    assert np.abs(got - _reference(tiny_run["best"], batch)).max() < 1e-4
    assert json.loads(sidecar_path(path).read_text())["format"] == "torchscript"


def test_exported_wrapper_returns_probabilities(tiny_run, batch):
    model, meta = load_for_export(tiny_run["best"])
    probs = model(batch)
    assert torch.allclose(probs.sum(1), torch.ones(3), atol=1e-6)
    assert meta["output"]["shape"] == ["N", 3]


def test_unknown_format_is_refused(tiny_run):
    from product_cnn.errors import ProductCNNError

    with pytest.raises(ProductCNNError, match="unknown export format 'tflite'"):
        export(tiny_run["best"], "tflite")
