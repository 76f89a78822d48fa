"""experiment=probe: cached backbone features, a fitted linear head, an ordinary checkpoint."""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from product_cnn.data.feature_cache import FeatureCache
from product_cnn.data.images import load_image
from product_cnn.inference.predictor import Predictor
from product_cnn.tasks import train
from tests.helpers import FAST, compose_cfg, write_image

PROBE = ["experiment=probe", "data.image_size=32"]


def _probe(root: Path, out: Path, cache: Path, *overrides: str, caplog) -> tuple[dict, int, int, Path]:
    """Run the probe; return (metrics, training photos, of them from the cache, output folder)."""
    cfg = compose_cfg("train", [*FAST, *PROBE, f"data.root={root}", *overrides], out, cache)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="product_cnn.training.probe"):
        metrics = train(cfg)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("Probe: features"))
    found = re.match(r"Probe: features of (\d+) training photos \((\d+) of \d+ from", line)
    total, cached = int(found.group(1)), int(found.group(2))
    return metrics, total, cached, Path(cfg.paths.output_dir)


def _tested(out: Path, root: Path) -> set[str]:
    """The photos of a run's test report."""
    with (out / "test_predictions.csv").open(newline="") as handle:
        return {str(root / row["path"]) for row in csv.DictReader(handle)}


def test_features_are_cached_and_invalidated_by_a_changed_photo_or_network(tree_factory, tmp_path, caplog):
    root = tree_factory({"Bags": 8, "Cups": 8, "Pens": 8})
    cache = tmp_path / "cache"
    metrics, total, cached, out = _probe(root, tmp_path / "a", cache, caplog=caplog)
    assert cached == 0 and total > 0 and 0 <= metrics["test/acc"] <= 1
    assert (out / "checkpoints" / "probe.ckpt").is_file() and (out / "metrics.json").is_file()
    _, total2, cached2, _ = _probe(root, tmp_path / "b", cache, caplog=caplog)
    assert (total2, cached2) == (total, total)  # the second run computes nothing
    with (out / "test_predictions.csv").open() as f:
        tested = {row["path"] for row in csv.DictReader(f)}
    photo = next(p for p in sorted(root.rglob("*.jpg")) if p.relative_to(root).as_posix() not in tested)
    write_image(photo, (0, 0, 0), seed=12345, size=(50, 40))  # a changed training photo (the test's own)
    _, total3, cached3, _ = _probe(root, tmp_path / "c", cache, caplog=caplog)
    assert (total3, cached3) == (total, total - 1)
    _, _, cached4, _ = _probe(root, tmp_path / "d", cache, "model.pretrained=false", caplog=caplog)
    assert cached4 == 0  # other weights: another network, nothing reused


def test_the_probe_checkpoint_predicts_what_features_and_head_predict(tree_factory, tmp_path, caplog):
    from sklearn.linear_model import LogisticRegression

    root = tree_factory({"Bags": 8, "Cups": 8, "Pens": 8})
    cache = tmp_path / "cache"
    _, _, _, out = _probe(root, tmp_path / "run", cache, "trainer.precision=auto", caplog=caplog)
    ckpt = out / "checkpoints" / "probe.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    assert saved["hyper_parameters"]["arch"] == "tf_efficientnet_lite0"
    assert saved["precision"] == "32-true"  # fp32 features and head: tested and recorded in fp32
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")  # precision=auto follows it: fp32
    assert predictor.precision == "32"
    features_file = next((cache / "features").glob("*.pt"))
    entries = torch.load(features_file, weights_only=True)
    photos = sorted(str(p) for p in root.rglob("*.jpg"))
    tested = _tested(out, root)
    assert tested and all(FeatureCache.photo_key(p) in entries for p in tested)  # the test read them there
    known = [p for p in photos if FeatureCache.photo_key(p) in entries and p not in tested]  # training
    x = torch.stack([entries[FeatureCache.photo_key(p)] for p in known]).double().numpy()
    y = [predictor.class_names.index(Path(p).parent.name) for p in known]
    mean, scale = x.mean(0), x.std(0)
    scale[scale < 1e-12] = 1
    head = LogisticRegression(C=1.0, max_iter=2000, random_state=42).fit((x - mean) / scale, y)
    temperature = saved["confidence"]["temperature"]  # the probe is calibrated (cross-fitted)
    want = torch.softmax(torch.tensor(head.predict_log_proba((x - mean) / scale)) / temperature, 1).numpy()
    batch = torch.stack([load_image(p, 32) for p in known])
    got = predictor.probabilities(batch).double().numpy()
    assert len(known) >= 12 and np.abs(got - want).max() < 1e-5


@pytest.mark.shared_data
def test_the_probe_reaches_085_over_five_folds_of_slash5(shared_slash5, tmp_path):
    accuracies = []
    for fold in range(5):
        cfg = compose_cfg("train", ["experiment=probe", f"data.root={shared_slash5}", "data.folds=5",
                                    f"data.fold={fold}", "trainer.accelerator=cpu", "data.num_workers=0",
                                    "callbacks.rich_progress_bar=null", "callbacks.model_summary=null"],
                          tmp_path / f"fold{fold}", tmp_path / "cache")
        accuracies.append(train(cfg)["test/acc"])
    assert np.mean(accuracies) >= 0.85, accuracies


def test_the_probe_is_cross_fitted_and_calls_outside_photos_unknown(tree_factory, tmp_path, caplog):
    """A probe on a small learnable folder (no validation split) carries a card from cross-fitting;
    real photos of no category (the packages' sample photos, a screenshot, a document) are
    `unknown` to it, its own test photos mostly not."""
    from bench.outside_photos import write_outside_photos
    from product_cnn.confidence.card import ConfidenceCard

    root = tree_factory({"Bags": 16, "Cups": 16, "Pens": 16})
    _, _, _, out = _probe(root, tmp_path / "run", tmp_path / "cache", "data.image_size=64", caplog=caplog)
    ckpt = out / "checkpoints" / "probe.ckpt"
    card = ConfidenceCard.from_dict(torch.load(ckpt, weights_only=True)["confidence"])
    assert card.source.startswith("training photos, cross-fitted (5 folds")
    assert card.unknown_threshold is not None and len(card.heldout_confidence) == len(card.bank)
    outside = [p for p in write_outside_photos(tmp_path / "outside") if "blank" not in p.name
               and "uniform" not in p.name]  # the folder's own photos are near-uniform colours
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    with (out / "test_predictions.csv").open() as f:
        tested = [root / row["path"] for row in csv.DictReader(f)]
    away = predictor.predict(outside)
    inside = predictor.predict(tested)
    assert sum(p.category == "unknown" for p in away) >= 0.8 * len(away), [
        (p.source, p.similarity) for p in away if p.category != "unknown"]
    assert sum(p.category == "unknown" for p in inside) <= 0.2 * len(inside)


@pytest.mark.slow  # about 70 s: two backbones at 224 and 240 px, twice, and an export
def test_several_backbones_are_cached_one_by_one_and_the_checkpoint_and_exports_predict_the_fitted_head(
        tree_factory, tmp_path, caplog):
    from sklearn.linear_model import LogisticRegression

    from product_cnn.inference.export import export
    from product_cnn.models.checkpoint import checkpoint_info, read_checkpoint
    from product_cnn.models.photo_features import network_key

    root = tree_factory({"Bags": 8, "Cups": 8, "Pens": 8})
    cache = tmp_path / "cache"
    several = ["model.arch=tf_efficientnet_lite0+tf_efficientnet_lite1", "confidence.fit=false"]
    _, total, cached, out = _probe(root, tmp_path / "a", cache, *several, caplog=caplog)
    assert cached == 0 and len(list((cache / "features").glob("*.pt"))) == 2  # one cache per backbone
    _, total2, cached2, _ = _probe(root, tmp_path / "b", cache, *several, caplog=caplog)
    assert (total2, cached2) == (total, 2 * total)  # both backbones' features from their caches
    ckpt = out / "checkpoints" / "probe.ckpt"
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    info = checkpoint_info(read_checkpoint(ckpt))
    members = predictor.net.net.members  # inside the temperature wrapper
    assert [m.size for m in members] == [(224, 224), (240, 240)]  # each at its pretrained size
    photos = sorted(str(p) for p in root.rglob("*.jpg"))
    caches = [torch.load(cache / "features" / f"{network_key(m, 32, info.decode)}.pt", weights_only=True)
              for m in members]
    tested = _tested(out, root)  # cached too (the test reads them there): the head saw the others
    known = [p for p in photos if all(FeatureCache.photo_key(p) in c for c in caches) and p not in tested]
    x = torch.cat([torch.stack([c[FeatureCache.photo_key(p)] for p in known]) for c in caches], 1)
    x = x.double().numpy()
    y = [predictor.class_names.index(Path(p).parent.name) for p in known]
    mean, scale = x.mean(0), x.std(0)
    scale[scale < 1e-12] = 1
    head = LogisticRegression(C=1.0, max_iter=2000, random_state=42).fit((x - mean) / scale, y)
    want = head.predict_proba((x - mean) / scale)
    batch = torch.stack([load_image(p, 32) for p in known])
    got = predictor.probabilities(batch).double().numpy()
    assert len(known) >= 12 and np.abs(got - want).max() < 1e-5
    pytest.importorskip("onnxruntime")
    from product_cnn.inference.exported import ExportedPredictor

    exported = ExportedPredictor(export(ckpt, "onnx", tmp_path / "several.onnx"), precision="32")
    assert np.abs(exported.probabilities(batch.numpy()) - want).max() < 1e-4


def test_several_backbones_refuse_a_bad_list_in_one_line():
    from product_cnn.errors import ProductCNNError
    from product_cnn.models.networks import build_network

    for arch, said in (("tf_efficientnet_lite0+no_such_net", "'no_such_net' is not a timm backbone"),
                       ("tf_efficientnet_lite0+resnet18", "'resnet18' is not a timm backbone"),
                       ("tf_efficientnet_lite0+tf_efficientnet_lite0", "two or more different")):
        with pytest.raises(ProductCNNError, match=said):
            build_network(arch, 3, 32)
    with pytest.raises(ProductCNNError, match=r"model\.flip_features=true averages several backbones"):
        build_network("tf_efficientnet_lite0", 3, 32, flip=True)
    with pytest.raises(ProductCNNError, match=r"model\.weights_path holds one network's weights"):
        build_network("tf_efficientnet_lite0+tf_efficientnet_lite1", 3, 32, weights_path="w.pt")


def test_cross_fit_folds_that_start_from_the_full_fit_reach_the_same_head():
    from product_cnn.training.probe import fit_linear_head

    gen = torch.Generator().manual_seed(0)
    labels = [i % 4 for i in range(120)]
    features = torch.randn(120, 32, generator=gen) + 2 * torch.nn.functional.one_hot(
        torch.tensor(labels), 32).float()
    full = fit_linear_head(features, labels, 4)
    some = list(range(0, 120, 5)) + list(range(1, 120, 5)) + list(range(2, 120, 5))
    cold = fit_linear_head(features[some], [labels[i] for i in some], 4)
    warm = fit_linear_head(features[some], [labels[i] for i in some], 4, start=full)
    probs = [torch.softmax(features @ w.T + b, 1) for w, b in (cold, warm)]
    assert (probs[0] - probs[1]).abs().max() < 1e-2  # one convex optimum, to the solver's tolerance
    assert (torch.softmax(features @ full[0].T + full[1], 1) - probs[0]).abs().max() > 2e-2  # fits differ
