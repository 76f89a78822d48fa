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
        got = torch.jit.load(str(path))(batch)[0].detach().numpy()
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


def _with_root(tmp_path: Path, root: Path) -> Path:
    """The fixture with its recorded photo folder moved to ``root`` (its other data options as written:
    ``demo``, ``demo_images_per_class``, ``demo_seed`` and the folder options, the names before the
    photo catalogue)."""
    saved = torch.load(LEGACY, map_location="cpu", weights_only=True)
    saved["datamodule_hyper_parameters"].update(root=str(root), cache_dir=str(tmp_path / "cache"))
    path = tmp_path / "moved.ckpt"
    torch.save(saved, path)
    return path


def test_eval_reads_the_old_data_options_of_a_legacy_checkpoint(legacy_photos, tmp_path):
    """No data.root: the data set the checkpoint recorded under its old option names, its test split."""
    from product_cnn.data.split import stratified_split

    ckpt = _with_root(tmp_path, legacy_photos)
    cfg = compose_cfg("eval", ["trainer.accelerator=cpu", f"ckpt_path={ckpt}",
                               "callbacks.rich_progress_bar=null"], tmp_path / "eval", tmp_path / "cache")
    evaluate(cfg)
    report = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    samples = sorted((str(p), CLASSES.index(p.parent.name)) for p in legacy_photos.rglob("*.jpg"))
    expected = stratified_split(samples, CLASSES, str(legacy_photos), val_fraction=0.2, test_fraction=0.1,
                                seed=42)["test"]
    assert report["class_names"] == CLASSES and report["num_samples"] == len(expected) > 0


def test_a_demo_checkpoint_with_the_old_names_evaluates_on_the_demo_photos(tmp_path):
    """``demo: true`` (how data=demo was recorded before it had a module of its own): the demo photos,
    made again when the cache was emptied."""
    from product_cnn.data.demo_data import DemoDataModule
    from product_cnn.data.for_checkpoint import open_test_data

    saved = {"root": str(tmp_path / "demo-v4"), "demo": True, "demo_images_per_class": 4, "demo_seed": 0,
             "image_size": 32, "batch_size": 8, "cache": False, "cache_dir": str(tmp_path / "cache"),
             "val_fraction": 0.25, "test_fraction": 0.25, "split_seed": 42, "check": False, "folds": None}
    names = ["Accessories", "Artifacts", "Fashion", "Home", "Stationary"]
    dm = open_test_data(saved, image_size=32, decode="full", class_names=names)
    assert isinstance(dm, DemoDataModule) and dm.hparams.decode == "full"
    assert sum(dm.counts()["test"]) == 5 and len(list((tmp_path / "demo-v4").rglob("*.jpg"))) == 20


def test_a_legacy_checkpoint_predicts_its_networks_own_probabilities(legacy_photos):
    """Through the one checkpoint reader the old checkpoint gives what its weights give in plain
    PyTorch, fp32 (1e-5)."""
    from product_cnn.models.networks import build_network

    saved = torch.load(LEGACY, map_location="cpu", weights_only=True)
    net = build_network("keras_cnn", 3, 32)
    net.load_state_dict({k.removeprefix("net."): v for k, v in saved["state_dict"].items()
                         if k.startswith("net.")})
    batch = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        want = torch.softmax(net.eval()(batch), dim=1)
    got = Predictor.from_checkpoint(str(LEGACY), device="cpu", precision="32").probabilities(batch)
    assert (got - want).abs().max() < 1e-5
