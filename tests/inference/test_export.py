import json

import numpy as np
import pytest
import torch

from product_cnn.confidence.gate import GateOptions
from product_cnn.inference.export import export, load_for_export, sidecar_path
from product_cnn.inference.predictor import Predictor

NO_UNKNOWN = GateOptions(unknown=False)  # a category for every photo


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
    got = scripted(batch)[0].detach().numpy()
    assert np.abs(got - _reference(tiny_run["best"], batch)).max() < 1e-4
    assert json.loads(sidecar_path(path).read_text())["format"] == "torchscript"


def test_the_export_carries_the_whole_answer(tiny_run, batch):
    """Probabilities, the pooled features, the "none of these" similarity and the nearest training
    photos, as the checkpoint's Predictor computes them (the bank is inside the model; the
    threshold and the photos' names in the sidecar)."""
    from product_cnn.models.checkpoint import checkpoint_info, read_checkpoint
    from product_cnn.models.penultimate import Penultimate

    model, meta = load_for_export(tiny_run["best"])
    probs, features, sims, nearest, nearest_sims = model(batch)
    predictor = Predictor.from_checkpoint(tiny_run["best"], device="cpu", precision="32")
    want_probs, want_sims, found = predictor.evidence(batch)
    assert [[row for row, *_ in photo] for photo in found] == nearest.tolist()
    assert [meta["nearest"]["photo"][row] for row, *_ in found[0]] == [photo for _, _, photo, _ in found[0]]
    torch.testing.assert_close(nearest_sims, torch.tensor([[s for *_, s in photo] for photo in found]),
                               atol=1e-5, rtol=0)
    assert predictor.gate.unknown_threshold is not None and want_sims is not None
    torch.testing.assert_close(probs, want_probs, atol=1e-5, rtol=0)
    torch.testing.assert_close(sims, want_sims, atol=1e-5, rtol=0)
    with Penultimate(predictor.net) as grab, torch.no_grad():
        predictor.net(batch)
    torch.testing.assert_close(features, grab.take(), atol=1e-5, rtol=0)
    card = checkpoint_info(read_checkpoint(tiny_run["best"])).card
    assert meta["outputs"] == {"probabilities": ["N", 3], "features": ["N", features.shape[1]],
                               "similarity": ["N"], "nearest": ["N", 3], "nearest_similarity": ["N", 3]}
    assert meta["calibration"]["unknown_threshold"] == card.unknown_threshold
    assert meta["precision"] == "32"  # tiny_run trains with trainer.precision=32-true


def test_unknown_format_is_refused(tiny_run):
    from product_cnn.errors import ProductCNNError

    with pytest.raises(ProductCNNError, match="unknown export format 'tflite'"):
        export(tiny_run["best"], "tflite")


def _uint8(batch):
    return (batch * 255).round().to(torch.uint8)


@pytest.mark.parametrize("fmt", ["openvino", "onnx"])
def test_exported_models_predict_as_the_checkpoint(tiny_run, tmp_path, batch, fmt):
    pytest.importorskip("openvino" if fmt == "openvino" else "onnxruntime")
    from product_cnn.inference.exported import ExportedPredictor

    path = export(tiny_run["best"], fmt, tmp_path / ("model.xml" if fmt == "openvino" else "model.onnx"))
    if fmt == "openvino":
        assert path.with_suffix(".bin").is_file() and not list(tmp_path.glob(".*"))  # no scratch left
    meta = json.loads(sidecar_path(path).read_text())
    assert meta["format"] == fmt and meta["decode"] == "reduced"
    images = _uint8(batch)
    exported = ExportedPredictor(path, precision="32")
    got = exported.probabilities(images.numpy())
    assert np.abs(got - _reference(tiny_run["best"], images)).max() < 1e-4
    photos = sorted(tiny_run["root"].rglob("*.jpg"))
    checkpoint = Predictor.from_checkpoint(tiny_run["best"], device="cpu")  # "none of these" on
    assert exported.gate.unknown_threshold == checkpoint.gate.unknown_threshold is not None
    want = checkpoint.predict(photos)
    for a, b in zip(exported.predict(photos), want, strict=True):
        assert a.source == b.source and a.category == b.category and a.verdict == b.verdict
        assert [p for _, p in a.topk] == pytest.approx([p for _, p in b.topk], abs=1e-4)
        assert a.similarity == pytest.approx(b.similarity, abs=1e-5)


def test_predict_py_runs_an_openvino_export_without_torch(tiny_run, tmp_path):
    pytest.importorskip("openvino")
    import csv
    import subprocess
    import sys
    from pathlib import Path

    xml = export(tiny_run["best"], "openvino", tmp_path / "model.xml")
    out = tmp_path / "p.csv"
    script = ("import runpy, sys\n"
              f"sys.argv = ['predict.py', 'ckpt_path={xml}', 'inputs={tiny_run['root']}', 'output={out}',"
              f" 'hydra.run.dir={tmp_path / 'run'}']\n"
              "try:\n    runpy.run_path('predict.py', run_name='__main__')\n"
              "finally:\n    print('torch imported' if 'torch' in sys.modules else 'no torch')\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("no torch")
    rows = list(csv.DictReader(out.open()))
    want = Predictor.from_checkpoint(tiny_run["best"], device="cpu", gate=NO_UNKNOWN).predict(
        [r["path"] for r in rows])
    assert len(rows) == 60 and [r["top1_category"] for r in rows] == [p.topk[0][0] for p in want]


def test_a_missing_export_is_one_line(tmp_path):
    from product_cnn.errors import ProductCNNError
    from product_cnn.inference.exported import ExportedPredictor

    with pytest.raises(ProductCNNError, match=r"model.xml or its sidecar model.xml.json does not exist"):
        ExportedPredictor(tmp_path / "model.xml")
