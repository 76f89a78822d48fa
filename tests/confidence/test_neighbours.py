"""The nearest training photos' vote: what it computes, and that every runtime mixes it alike."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from product_cnn.confidence.neighbours import mix, nearest, neighbour_vote
from product_cnn.data.images import load_array, load_image
from product_cnn.errors import ProductCNNError
from product_cnn.inference.predictor import Predictor
from product_cnn.models.checkpoint import read_checkpoint
from product_cnn.tasks import train
from tests.helpers import FAST, compose_cfg


def test_the_vote_goes_to_the_labels_of_the_nearest_training_photos():
    bank = F.normalize(torch.eye(4)[:3] + 0.01, dim=1)  # three training photos, classes 2, 0, 1
    labels = torch.tensor([2, 0, 1])
    photos = torch.stack([bank[0] * 3 + 0.05 * torch.randn(4, generator=torch.Generator().manual_seed(0)),
                          bank[2] * 0.5])
    vote = neighbour_vote(photos, bank, labels, num_classes=3, k=3)
    assert vote.argmax(1).tolist() == [2, 1] and bool((vote.max(1).values > 0.99).all())
    assert torch.allclose(vote.sum(1), torch.ones(2))
    head = torch.tensor([[0.1, 0.8, 0.1], [0.6, 0.2, 0.2]])
    assert torch.equal(mix(head, vote, 0.0), head)
    mixed = mix(head, vote, 0.5)
    assert torch.allclose(mixed.sum(1), torch.ones(2)) and mixed.argmax(1).tolist() == [2, 1]
    index, sims = nearest(photos, bank, n=2)
    assert index[:, 0].tolist() == [0, 2] and bool((sims[:, 0] > 0.99).all())


@pytest.fixture(scope="module")
def voting_probe(tmp_path_factory) -> tuple[Path, Path]:
    """A probe on a tiny tree whose card mixes in the vote at 0.5: (checkpoint, run folder)."""
    from tests.helpers import make_tree

    base = tmp_path_factory.mktemp("vote")
    root = make_tree(base / "photos", {"Bags": 8, "Cups": 8, "Pens": 8})
    cfg = compose_cfg("train", [*FAST, "experiment=probe", "data.image_size=32", f"data.root={root}",
                                "confidence.vote_share=0.5"], base / "run", base / "cache")
    train(cfg)
    out = Path(cfg.paths.output_dir)
    return out / "checkpoints" / "probe.ckpt", out


def _tested(out: Path) -> tuple[list[str], np.ndarray, list[str]]:
    """(photo paths, their probabilities, class names) from the run's test_predictions.csv."""
    rows = list(csv.DictReader((out / "test_predictions.csv").open()))
    names = [c.removeprefix("prob_") for c in rows[0] if c.startswith("prob_")]
    root = Path(read_checkpoint(out / "checkpoints" / "probe.ckpt")["datamodule_hyper_parameters"]["root"])
    return ([str(root / r["path"]) for r in rows],
            np.array([[float(r[f"prob_{n}"]) for n in names] for r in rows]), names)


def test_the_card_keeps_each_bank_photo_with_its_label_and_path(voting_probe):
    ckpt, _ = voting_probe
    card = read_checkpoint(ckpt)["confidence"]
    assert card["vote_share"] == 0.5
    assert len(card["bank_labels"]) == len(card["bank_paths"]) == len(card["bank"])
    names = read_checkpoint(ckpt)["hyper_parameters"]["class_names"]
    assert [names[int(i)] for i in card["bank_labels"]] == [Path(p).parent.name for p in card["bank_paths"]]


def test_the_test_report_predictor_and_export_give_the_same_mixture(voting_probe, tmp_path):
    ckpt, out = voting_probe
    paths, reported, names = _tested(out)
    predictor = Predictor.from_checkpoint(ckpt, device="cpu", precision="32")
    assert predictor.class_names == names and predictor.cards[0].votes
    batch = torch.stack([load_image(p, 32) for p in paths])
    got = predictor.probabilities(batch).double().numpy()
    assert np.abs(got - reported).max() < 1e-5
    head_only = Predictor.from_checkpoint(ckpt, device="cpu", precision="32")
    head_only.cards[0].vote_share = 0.0
    head_only.net = head_only.net.net  # the temperature-scaled network without the vote
    assert np.abs(head_only.probabilities(batch).double().numpy() - got).max() > 1e-3  # the vote counts
    pytest.importorskip("onnxruntime")
    from product_cnn.inference.export import export
    from product_cnn.inference.exported import ExportedPredictor

    model = export(ckpt, "onnx", tmp_path / "probe.onnx")
    exported = ExportedPredictor(model)
    arrays = np.stack([load_array(p, 32) for p in paths])
    assert np.abs(exported.probabilities(arrays) - got).max() < 1e-4


def test_a_share_outside_zero_to_one_is_one_line(tmp_path):
    from tests.helpers import make_tree

    root = make_tree(tmp_path / "photos", {"Bags": 6, "Cups": 6})
    cfg = compose_cfg("train", [*FAST, "experiment=probe", "data.image_size=32", f"data.root={root}",
                                "confidence.vote_share=1.5"], tmp_path / "run", tmp_path / "cache")
    with pytest.raises(ProductCNNError, match=r"vote_share=1.5 must be in \[0, 1\)"):
        train(cfg)


def test_predictions_and_review_page_name_the_nearest_training_photos(voting_probe, tmp_path):
    from product_cnn.confidence.gate import GateOptions
    from product_cnn.inference.results import save_predictions

    ckpt, out = voting_probe
    paths, _, _ = _tested(out)
    predictor = Predictor.from_checkpoint(ckpt, device="cpu", precision="32",
                                          gate=GateOptions(min_confidence=0.9999, unknown=False))
    predictions = predictor.predict(paths)
    bank = read_checkpoint(ckpt)["confidence"]
    for p in predictions:  # each: 3 training photos of the bank, most similar first, labelled as trained
        assert len(p.nearest) == 3 and all(photo in bank["bank_paths"] for _, photo, _ in p.nearest)
        assert [c for c, photo, _ in p.nearest] == [Path(photo).parent.name for _, photo, _ in p.nearest]
        assert [s for _, _, s in p.nearest] == sorted((s for _, _, s in p.nearest), reverse=True)
    save_predictions(predictions, tmp_path / "predictions.csv", 3, gate=predictor.gate)
    rows = list(csv.DictReader((tmp_path / "predictions.csv").open()))
    assert [r["nearest1_photo"] for r in rows] == [p.nearest[0][1] for p in predictions]
    page = (tmp_path / "review.html").read_text()
    held = sum(1 for p in predictions if p.verdict)
    assert held > 0 and page.count("nearest training photos:") == held
    assert page.count('<figure title="') == 3 * held and page.count("data:image/jpeg;base64,") == 4 * held


@pytest.mark.slow  # a server (about 20 s); CI runs the slow tests too
def test_the_server_answers_with_the_same_mixture(voting_probe, tmp_path):
    from tests.serve.test_serve import Server, httpx

    ckpt, out = voting_probe
    paths, reported, names = _tested(out)
    running = Server(tmp_path, f"ckpt_path={ckpt}", "device=cpu", "unknown=false", "topk=3")
    try:
        for path, want in list(zip(paths, reported, strict=True))[:4]:
            with open(path, "rb") as handle:
                got = httpx.post(f"{running.url}/predict", files={"file": ("p.jpg", handle, "image/jpeg")},
                                 timeout=60).json()
            assert dict(got["topk"]) == pytest.approx({n: float(p) for n, p in zip(names, want, strict=True)},
                                                      abs=1e-5)
    finally:
        running.stop()
