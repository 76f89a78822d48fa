"""A checkpoint written before ``product_cnn/`` was split into sub-packages still loads everywhere a
checkpoint loads: eval, predict (one and an ensemble), export, serve, and resuming training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from product_cnn.inference.export import export
from product_cnn.inference.predictor import Predictor
from product_cnn.tasks import evaluate, train
from tests.helpers import FAST, REPO, compose_cfg, make_tree

LEGACY = REPO / "tests" / "fixtures" / "legacy" / "mirror_32px_pre_restructure.ckpt"
CLASSES = ["Bags", "Cups", "Pens"]


@pytest.fixture(scope="module")
def legacy_photos(tmp_path_factory) -> Path:
    """The tree the fixture was trained on (make_tree is deterministic; see the fixture's README)."""
    return make_tree(tmp_path_factory.mktemp("legacy") / "photos", {c: 8 for c in CLASSES})


def test_the_fixture_was_written_before_the_move():
    saved = torch.load(LEGACY, map_location="cpu", weights_only=True)
    assert saved["hyper_parameters"]["class_names"] == CLASSES
    assert saved["hyper_parameters"]["image_size"] == 32 and saved["hyper_parameters"]["arch"] == "keras_cnn"


def test_eval_tests_a_legacy_checkpoint(legacy_photos, tmp_path):
    cfg = compose_cfg("eval", ["trainer.accelerator=cpu", f"ckpt_path={LEGACY}", f"data.root={legacy_photos}",
                               "data.num_workers=0", "callbacks.rich_progress_bar=null"],
                      tmp_path / "eval", tmp_path / "cache")
    metrics = evaluate(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0
    report = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert report["class_names"] == CLASSES and report["num_samples"] == 24


def test_predict_and_an_ensemble_take_a_legacy_checkpoint(legacy_photos):
    photos = sorted(str(p) for p in legacy_photos.rglob("*.jpg"))[:6]
    one = Predictor.from_checkpoint(str(LEGACY), device="cpu")
    assert one.class_names == CLASSES
    predictions = one.predict(photos, topk=3)
    assert all(p.ok and p.category in CLASSES for p in predictions)
    pair = Predictor.from_checkpoint([str(LEGACY), str(LEGACY)], device="cpu")
    twice = pair.predict(photos, topk=3)
    assert [p.category for p in twice] == [p.category for p in predictions]
    assert np.allclose([p.confidence for p in twice], [p.confidence for p in predictions], atol=1e-5)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_takes_a_legacy_checkpoint(fmt, tmp_path):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    path = export(LEGACY, fmt, tmp_path / ("m.onnx" if fmt == "onnx" else "m.pt"))
    batch = torch.rand(2, 3, 32, 32)
    want = Predictor.from_checkpoint(str(LEGACY), device="cpu").probabilities(batch).numpy()
    if fmt == "onnx":
        import onnxruntime as ort

        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
            None, {"images": batch.numpy()})[0]
    else:
        got = torch.jit.load(str(path))(batch).detach().numpy()
    assert np.abs(got - want).max() < 1e-4


def test_training_resumes_from_a_legacy_checkpoint(legacy_photos, tmp_path):
    cfg = compose_cfg("train", [*FAST, "data=folder", f"data.root={legacy_photos}", "data.image_size=32",
                                "data.cache=false", "trainer.max_epochs=2", f"ckpt_path={LEGACY}"],
                      tmp_path / "run", tmp_path / "cache")
    metrics = train(cfg)
    assert "test/acc" in metrics
    last = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 1  # epoch 0 came from the legacy checkpoint, epoch 1 was trained here


def test_serve_answers_with_a_legacy_checkpoint(legacy_photos, tmp_path):
    httpx = pytest.importorskip("httpx")
    from tests.serve.test_serve import Server

    server = Server(tmp_path, f"ckpt_path={LEGACY}", "workers=1")
    try:
        info = httpx.get(f"{server.url}/info", timeout=10).json()
        photo = next(legacy_photos.rglob("*.jpg"))
        with photo.open("rb") as f:
            answer = httpx.post(f"{server.url}/predict", files={"file": (photo.name, f, "image/jpeg")},
                                timeout=30).json()
    finally:
        server.stop()
    assert info["class_names"] == CLASSES
    want = Predictor.from_checkpoint(str(LEGACY), device="cpu").predict([str(photo)])[0]
    assert answer["category"] == want.category and abs(answer["confidence"] - want.confidence) < 1e-4
