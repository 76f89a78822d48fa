"""Confidence in predict.py and exports: the stored temperature is applied everywhere, and the
gate routes exactly the photos under its threshold to unsure, _review/ and review.csv."""

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from product_cnn.confidence.card import ConfidenceCard
from product_cnn.confidence.gate import GateOptions
from product_cnn.data.images import load_image, to_unit_float
from product_cnn.inference.export import export, sidecar_path
from product_cnn.inference.predictor import Predictor
from product_cnn.models.checkpoint import read_checkpoint
from product_cnn.tasks import predict
from product_cnn.training.module import ProductClassifier
from tests.helpers import compose_cfg

NO_UNKNOWN = GateOptions(unknown=False)  # a category for every photo


def _photos(tiny_run) -> list[Path]:
    return sorted(tiny_run["root"].rglob("*.jpg"))


@pytest.fixture(scope="module")
def calibrated(tiny_run, tmp_path_factory) -> Path:
    """tiny_run's checkpoint with a temperature of 2.5 in its card (its own 12 validation photos
    are all right, so its fitted temperature is 1): one that softens visibly."""
    from product_cnn.training.calibrate import store_card

    path = tmp_path_factory.mktemp("calibrated") / "calibrated.ckpt"
    shutil.copyfile(tiny_run["best"], path)
    card = ConfidenceCard.from_dict(read_checkpoint(path)["confidence"])
    card.temperature = 2.5
    store_card(path, card)
    return path


def test_the_checkpoint_carries_a_card_fitted_on_its_validation_photos(tiny_run):
    checkpoint = read_checkpoint(tiny_run["best"])
    card = ConfidenceCard.from_dict(checkpoint["confidence"])
    assert card.source == "validation split (12 photos)" and len(card.heldout_confidence) == 12
    # no temperature (1) exactly when every held-out prediction was right: nothing to fit it on
    assert card.temperature > 0 and (card.temperature == 1.0) == bool(card.heldout_correct.all())
    assert card.bank is not None and card.bank.dtype == torch.float16 and card.unknown_threshold is not None
    assert "confidence" not in torch.load(tiny_run["run"] / "checkpoints" / "last.ckpt", weights_only=True)


def test_the_stored_temperature_reaches_predict_and_the_exports(tiny_run, calibrated, tmp_path):
    module = ProductClassifier.from_checkpoint_dict(read_checkpoint(calibrated)).eval()
    assert module.temperature == 2.5
    batch = torch.stack([load_image(p, 64) for p in _photos(tiny_run)[:8]])
    with torch.no_grad():
        expected = torch.softmax(module.net(to_unit_float(batch)) / module.temperature, 1)
        raw = torch.softmax(module.net(to_unit_float(batch)), 1)
    got = Predictor.from_checkpoint(calibrated, device="cpu").probabilities(batch)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert (got - raw).abs().max() > 1e-3  # the temperature made a difference
    scripted = torch.jit.load(str(export(calibrated, "torchscript", tmp_path / "m.pt")))
    torch.testing.assert_close(scripted(to_unit_float(batch))[0], expected, atol=1e-5, rtol=0)
    meta = json.loads(sidecar_path(tmp_path / "m.pt").read_text())
    assert meta["calibration"]["temperature"] == pytest.approx(module.temperature)
    assert len(meta["calibration"]["heldout_confidence"]) == 12
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(export(calibrated, "onnx", tmp_path / "m.onnx")))
    onnx = session.run(None, {"images": to_unit_float(batch).numpy()})[0]
    assert np.abs(onnx - expected.numpy()).max() < 1e-5


def _sha(paths: list[Path]) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


def test_min_confidence_routes_exactly_the_photos_under_it(tiny_run, calibrated, tmp_path):
    photos = _photos(tiny_run)
    before = _sha(photos)
    plain = Predictor.from_checkpoint(calibrated, device="cpu", gate=NO_UNKNOWN).predict(photos)
    threshold = float(np.median([p.confidence for p in plain]))
    out, sort_dir = tmp_path / "out" / "predictions.csv", tmp_path / "sorted"
    cfg = compose_cfg("predict", [f"ckpt_path={calibrated}", f"inputs={tiny_run['root']}", "device=cpu",
                                  f"output={out}", f"min_confidence={threshold}", "unknown=false",
                                  f"sort_into={sort_dir}"], tmp_path / "run", tmp_path / "cache")
    assert predict(cfg) == 0
    rows = list(csv.DictReader(out.open()))
    below = {p.source for p in plain if p.confidence < threshold}
    assert 0 < len(below) < len(photos)
    for row, want in zip(rows, plain, strict=True):
        assert row["path"] == want.source and row["top1_category"] == want.topk[0][0]
        assert row["category"] == ("unsure" if want.source in below else want.category)
    # copies, same-named photos of two classes numbered apart: compare the files themselves
    assert sorted(_sha(list((sort_dir / "_review").iterdir()))) == sorted(_sha([Path(s) for s in below]))
    filed = [p for p in sort_dir.rglob("*.jpg") if p.parent.name != "_review"]
    assert len(filed) == len(photos) - len(below)
    review = list(csv.DictReader((out.parent / "review.csv").open()))
    assert {r["path"] for r in review} == {str(Path(s).resolve()) for s in below}
    assert all(r["label"] == next(p.topk[0][0] for p in plain if p.source == str(Path(r["path"])))
               for r in review)
    confidences = [float(r["confidence"]) for r in review]
    assert confidences == sorted(confidences)  # most doubtful first
    page = (out.parent / "review.html").read_text()
    assert f"Needs review: {len(below)} photos" in page
    assert page.count("data:image/jpeg;base64,") == 4 * len(below)  # each photo and its 3 nearest
    assert _sha(photos) == before  # the photos themselves are untouched


def test_target_accuracy_takes_the_threshold_the_held_out_photos_reached(tiny_run):
    card = ConfidenceCard.from_dict(read_checkpoint(tiny_run["best"])["confidence"])
    target = float(card.heldout_correct.float().mean())  # the whole held-out set reaches this
    gate = GateOptions(target_accuracy=target)
    predictor = Predictor.from_checkpoint(tiny_run["best"], device="cpu", gate=gate)
    assert predictor.gate.min_confidence == pytest.approx(card.threshold_for(target)[0])
    assert predictor.gate.target_accuracy == target


def test_a_second_review_keeps_the_first_review_csv(tmp_path):
    from product_cnn.inference.results import Prediction
    from product_cnn.inference.review import write_review

    held = [Prediction("a.jpg", "unsure", 0.4, [("Bags", 0.4)], verdict="unsure")]
    write_review(held, tmp_path, "unsure below 0.5")
    (tmp_path / "review.csv").write_text("path,label\na.jpg,Cups\n")  # a person's corrections
    write_review(held, tmp_path, "unsure below 0.5")
    assert (tmp_path / "review.1.csv").read_text() == "path,label\na.jpg,Cups\n"
    assert "Bags" in (tmp_path / "review.csv").read_text()
