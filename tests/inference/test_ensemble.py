"""Ensembles: predict.py with several checkpoints, and the cross-validated ensemble of sweeps."""

import csv
import shutil
import subprocess
import sys

import pytest
import torch

from product_cnn.errors import CheckpointError, DataError
from product_cnn.evaluation.cv import ensemble_summary
from product_cnn.inference.predictor import Predictor
from tests.helpers import REPO


def _variant(ckpt, path, seed=0, **hparams):
    """A copy of ``ckpt`` with perturbed weights and, optionally, other hyper-parameters."""
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    generator = torch.Generator().manual_seed(seed)
    for key, value in saved["state_dict"].items():
        if value.is_floating_point() and "running" not in key:
            saved["state_dict"][key] = value + 0.05 * torch.randn(value.shape, generator=generator)
    saved["hyper_parameters"].update(hparams)
    torch.save(saved, path)
    return path


def _probs(predictor, files):
    return torch.tensor([[dict(r.topk)[n] for n in predictor.class_names]
                         for r in predictor.predict(files, topk=len(predictor.class_names))])


@pytest.fixture
def photos(tiny_run):
    return sorted(str(p) for p in tiny_run["root"].rglob("*.jpg"))[::6]


def test_an_ensemble_predicts_the_mean_of_its_members_probabilities(tiny_run, photos, tmp_path):
    first, second = tiny_run["best"], _variant(tiny_run["best"], tmp_path / "other.ckpt")
    single = [_probs(Predictor.from_checkpoint(c, device="cpu", batch_size=4), photos)
              for c in (first, second)]
    assert (single[0] - single[1]).abs().max() > 1e-3  # the members really differ
    both = Predictor.from_checkpoint([first, second], device="cpu", batch_size=4)
    assert torch.allclose(_probs(both, photos), (single[0] + single[1]) / 2, atol=1e-5)
    # one checkpoint twice is that checkpoint
    twice = Predictor.from_checkpoint([first, first], device="cpu", batch_size=4)
    assert torch.allclose(_probs(twice, photos), single[0], atol=1e-5)
    # flip TTA on top: the mean over members and mirror images
    tta = [_probs(Predictor.from_checkpoint(c, device="cpu", tta="flip"), photos) for c in (first, second)]
    both_tta = _probs(Predictor.from_checkpoint([first, second], device="cpu", tta="flip"), photos)
    assert torch.allclose(both_tta, (tta[0] + tta[1]) / 2, atol=1e-5)


def test_members_of_another_class_list_or_size_are_refused_in_one_line(tiny_run, tmp_path):
    names = list(torch.load(tiny_run["best"], weights_only=True)["hyper_parameters"]["class_names"])
    reordered = _variant(tiny_run["best"], tmp_path / "reordered.ckpt", class_names=names[::-1])
    refused = r"reordered\.ckpt was trained on classes .*one class list"
    with pytest.raises(CheckpointError, match=refused) as err:
        Predictor.from_checkpoint([tiny_run["best"], reordered], device="cpu")
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="no checkpoint files match"):
        Predictor.from_checkpoint([tiny_run["best"], str(tmp_path / "none" / "*.ckpt")], device="cpu")


def test_predict_cli_takes_a_glob_of_checkpoints(tiny_run, photos, tmp_path):
    members = tmp_path / "members"
    (members / "a").mkdir(parents=True)
    (members / "b").mkdir()
    shutil.copy(tiny_run["best"], members / "a" / "best.ckpt")
    _variant(tiny_run["best"], members / "b" / "best.ckpt")
    out = tmp_path / "p.csv"
    proc = subprocess.run([sys.executable, str(REPO / "predict.py"), f"ckpt_path={members}/*/best.ckpt",
                           f"inputs={photos[0]}", f"output={out}", f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "with an ensemble of 2 checkpoints" in proc.stderr + proc.stdout
    row = next(csv.DictReader(out.open()))
    expected = Predictor.from_checkpoint([members / "a" / "best.ckpt", members / "b" / "best.ckpt"],
                                         device="cpu").predict(photos[0])[0]
    assert row["category"] == expected.category
    assert float(row["confidence"]) == pytest.approx(expected.confidence, abs=1e-5)


@pytest.mark.parametrize("script", ["eval.py", "export.py"])
def test_scripts_that_take_one_checkpoint_refuse_a_list_in_one_line(tiny_run, tmp_path, script):
    ckpt = tiny_run["best"]
    proc = subprocess.run([sys.executable, str(REPO / script), f"ckpt_path=[{ckpt},{ckpt}]",
                           f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "must be one checkpoint file here" in proc.stderr and "predict.py" in proc.stderr
    assert "Traceback" not in proc.stderr


def _write_oof(folder, rows, names):
    folder.mkdir(parents=True)
    with (folder / "oof_predictions.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["path", "label", "predicted", "fold", *[f"prob_{n}" for n in names]])
        writer.writeheader()
        writer.writerows(rows)


def test_cv_ensemble_averages_out_of_fold_probabilities(tmp_path):
    names = ["A", "B"]
    # 4 photos in 2 folds; sweep x is right on fold 0 only, sweep y on fold 1 only, y more sure
    photos = [("A/1.jpg", "A", 0), ("B/2.jpg", "B", 0), ("A/3.jpg", "A", 1), ("B/4.jpg", "B", 1)]

    def rows(right_fold, sure):
        out = []
        for path, label, fold in photos:
            p_a = sure if (label == "A") == (fold == right_fold) else 1 - sure
            out.append({"path": path, "label": label, "predicted": "A" if p_a > 0.5 else "B", "fold": fold,
                        "prob_A": p_a, "prob_B": 1 - p_a})
        return out

    _write_oof(tmp_path / "x", rows(0, 0.6), names)
    _write_oof(tmp_path / "y", rows(1, 0.9), names)
    summary = ensemble_summary([tmp_path / "x", tmp_path / "y"])
    # mean P(right) per photo: fold 0 (0.6 + 0.1) / 2 = 0.35 -> wrong; fold 1 (0.4 + 0.9) / 2 -> right
    assert [f["accuracy"] for f in summary["per_fold"]] == [0.0, 1.0]
    assert summary["pooled"]["accuracy"] == pytest.approx(0.5)
    assert summary["mean_sd"]["accuracy"]["mean"] == pytest.approx(0.5)
    same = ensemble_summary([tmp_path / "x", tmp_path / "x"])
    assert [f["accuracy"] for f in same["per_fold"]] == [1.0, 0.0]

    moved = rows(0, 0.6)
    moved[0]["fold"] = 1
    _write_oof(tmp_path / "z", moved, names)
    with pytest.raises(DataError, match=r"A/1\.jpg in another fold or class"):
        ensemble_summary([tmp_path / "x", tmp_path / "z"])
    _write_oof(tmp_path / "w", rows(0, 0.6)[:3], names)
    with pytest.raises(DataError, match="predicted other photos"):
        ensemble_summary([tmp_path / "x", tmp_path / "w"])
    # a sweep that ran fold 1 only: the ensemble counts the common fold
    _write_oof(tmp_path / "v", rows(1, 0.9)[2:], names)
    partial = ensemble_summary([tmp_path / "x", tmp_path / "v"])
    assert partial["completed"] == [1] and partial["pooled"]["num_samples"] == 2
    assert [f["accuracy"] for f in partial["per_fold"]] == [1.0]
