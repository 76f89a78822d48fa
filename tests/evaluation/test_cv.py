"""Cross-validation as a Hydra multirun: summary, out-of-fold file, failed and resumed folds, label issues."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import FAST, PALETTE, REPO, make_tree, write_image

PLANTED = {"Cups/odd_0.jpg": "Bags", "Pens/odd_1.jpg": "Cups", "Bags/odd_2.jpg": "Pens"}  # path: its look


def _train(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="session")
def cv_sweep(tmp_path_factory) -> dict:
    """3 folds of a learnable folder with planted label errors, plus a 4th job that fails."""
    base = tmp_path_factory.mktemp("cv")
    root = make_tree(base / "photos", {"Bags": 20, "Cups": 20, "Pens": 20})
    for (path, look), seed in zip(PLANTED.items(), range(3), strict=True):
        write_image(root / path, PALETTE[["Bags", "Cups", "Pens"].index(look)], seed=900 + seed)
    sweep = base / "sweep"
    proc = _train("-m", *FAST, "data=folder", f"data.root={root}", "data.folds=3",
                  "data.fold=range(4)", "trainer.max_epochs=6", f"paths.cache_dir={base / 'cache'}",
                  f"hydra.sweep.dir={sweep}", cwd=base)
    return {"proc": proc, "sweep": sweep, "root": root, "base": base}


def test_cv_sweep_writes_the_summary_and_names_the_failed_fold(cv_sweep):
    proc, sweep = cv_sweep["proc"], cv_sweep["sweep"]
    assert proc.returncode == 1, proc.stderr[-3000:]  # one job failed...
    assert "error: job 3 failed: data.fold=3 is not one of 0..2 (data.folds=3)" in proc.stderr
    assert "Traceback" not in proc.stderr
    summary = json.loads((sweep / "cv_summary.json").read_text())
    assert summary["completed"] == [0, 1, 2]  # ...the others still count
    assert [f["fold"] for f in summary["failed"]] == [3] and "0..2" in summary["failed"][0]["error"]
    assert summary["folds"] == 3 and summary["class_names"] == ["Bags", "Cups", "Pens"]
    assert len(summary["per_fold"]) == 3
    accuracies = [f["accuracy"] for f in summary["per_fold"]]
    assert summary["mean_sd"]["accuracy"]["mean"] == pytest.approx(sum(accuracies) / 3)
    assert set(summary["mean_sd"]["recall"]) == {"Bags", "Cups", "Pens"}
    report = (sweep / "cv_report.md").read_text()
    assert "fold 3 failed" in report and "mean +- sd" in report and "Pooled out-of-fold report" in report
    assert (sweep / "cv_confusion.png").stat().st_size > 1000
    conf = summary["confidence"]  # each fold calibrated on its validation photos
    assert len(conf["temperature"]) == 3 and 0 <= conf["ece_after"] <= 1 and 0 <= conf["ece_before"] <= 1
    assert conf["oof_temperature"] > 0
    assert [p["target_accuracy"] for p in conf["operating_points"]] == [0.98, 0.95]
    assert "## Confidence (out of fold)" in report and "confidence >= | filed | accuracy" in report
    assert (sweep / "calibration.png").is_file() and (sweep / "coverage.png").is_file()


def test_out_of_fold_file_lists_every_photo_exactly_once(cv_sweep):
    sweep, root = cv_sweep["sweep"], cv_sweep["root"]
    rows = list(csv.DictReader((sweep / "oof_predictions.csv").open()))
    photos = sorted(str(p.relative_to(root)) for p in root.rglob("*.jpg"))
    assert sorted(r["path"] for r in rows) == photos  # every photo, once
    assert {r["fold"] for r in rows} == {"0", "1", "2"}
    for r in rows:
        probs = [float(r[f"prob_{n}"]) for n in ("Bags", "Cups", "Pens")]
        assert sum(probs) == pytest.approx(1, abs=1e-4)
        assert r["predicted"] == ["Bags", "Cups", "Pens"][probs.index(max(probs))]
    summary = json.loads((sweep / "cv_summary.json").read_text())
    assert summary["pooled"]["num_samples"] == len(photos)
    correct = sum(r["label"] == r["predicted"] for r in rows)
    assert summary["pooled"]["accuracy"] == pytest.approx(correct / len(rows))


def test_label_issues_rank_the_planted_errors_first(cv_sweep, tmp_path):
    sweep = cv_sweep["sweep"]
    proc = subprocess.run([sys.executable, str(REPO / "find_label_issues.py"), f"cv_dir={sweep}",
                           f"paths.cache_dir={cv_sweep['base'] / 'cache'}", f"hydra.run.dir={tmp_path}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((sweep / "label_issues.csv").open()))
    assert [r["rank"] for r in rows] == [str(i) for i in range(1, len(rows) + 1)]
    top = {r["path"]: r for r in rows[:3]}  # the photos filed in a folder they do not belong to
    assert set(top) == set(PLANTED)
    assert all(top[p]["suggested_label"] == look for p, look in PLANTED.items())
    assert all(float(r["self_confidence"]) < 0.5 for r in top.values())
    page = (sweep / "label_issues.html").read_text()
    assert page.count("data:image/jpeg;base64,") == len(rows)  # thumbnails inside the page
    assert "http://" not in page and "https://" not in page and "<script" not in page  # offline


def test_a_resumed_fold_ends_in_the_same_summary(cv_sweep, tmp_path):
    sweep = tmp_path / "sweep"
    shutil.copytree(cv_sweep["sweep"], sweep)  # the other tests read the original
    before = json.loads((sweep / "cv_summary.json").read_text())
    for name in ("metrics.json", "test_predictions.csv"):  # fold 1 as if it had been interrupted
        (sweep / "1" / name).unlink()
    resume = [f"data.root={cv_sweep['root']}", "data.folds=3", "data.fold=1",
              "trainer.max_epochs=7", f"paths.cache_dir={cv_sweep['base'] / 'cache'}",
              f"ckpt_path={sweep / '1' / 'checkpoints' / 'last.ckpt'}",
              f"hydra.run.dir={tmp_path / 'resume'}"]
    proc = _train(*FAST, "data=folder", *resume, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((sweep / "1" / "metrics.json").read_text())
    after = json.loads((sweep / "cv_summary.json").read_text())
    assert after["completed"] == before["completed"] == [0, 1, 2]
    fold1 = next(f for f in after["per_fold"] if f["fold"] == 1)
    assert fold1["accuracy"] == metrics["accuracy"] and fold1["run"] == str(sweep / "1")
    rows = list(csv.DictReader((sweep / "oof_predictions.csv").open()))
    assert len(rows) == before["pooled"]["num_samples"]


def test_near_duplicates_with_different_labels_are_listed_first(tree_factory):
    """Conflicts come from the photos themselves, before any model's opinion."""
    from product_cnn.evaluation.label_issues import CONFLICT, find_issues

    root = tree_factory({"Bags": 10, "Cups": 10, "Pens": 10})
    shutil.copy(root / "Bags" / "img_000.jpg", root / "Cups" / "copy_of_bag.jpg")
    names = ["Bags", "Cups", "Pens"]
    rows = []
    for path in sorted(root.rglob("*.jpg")):
        label = path.parent.name
        probs = [0.9 if n == label else 0.05 for n in names]
        if path.name == "img_005.jpg" and label == "Pens":  # the model's one clear doubt
            probs = [0.05, 0.9, 0.05]
        rows.append({"path": str(path.relative_to(root)), "label": label,
                     **{f"prob_{n}": str(p) for n, p in zip(names, probs, strict=True)}})
    issues = find_issues(rows, names, str(root))
    assert {x.path for x in issues[:2]} == {"Bags/img_000.jpg", "Cups/copy_of_bag.jpg"}
    assert all(x.reason == CONFLICT and x.group == 1 for x in issues[:2])
    assert issues[2].path == "Pens/img_005.jpg" and issues[2].suggested == "Cups"
    assert [x.rank for x in issues] == list(range(1, len(issues) + 1))


@pytest.mark.slow  # a 3-fold probe sweep in a subprocess (about 40 s)
def test_the_overlap_report_names_the_planted_overlapping_pair_first(tmp_path):
    from product_cnn.data.relabel import read_relabel

    root = make_tree(tmp_path / "photos", {"Bags": 12, "Cups": 12, "Mugs": 12, "Pens": 12})
    for i in range(12):  # Mugs look exactly like Cups: the labels cannot be told apart
        write_image(root / "Mugs" / f"img_{i:03d}.jpg", PALETTE[1], seed=5000 + i)
    sweep = tmp_path / "sweep"
    proc = _train("-m", *FAST, "experiment=probe", "data.image_size=32", f"data.root={root}", "data.folds=3",
                  "data.fold=range(3)", f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}",
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    overlap = json.loads((sweep / "cv_summary.json").read_text())["overlap"]
    first = overlap["pairs"][0]
    assert (first["a"], first["b"]) == ("Cups", "Mugs") and first["confused"] >= 6
    assert all(p["confused"] < first["confused"] for p in overlap["pairs"][1:])
    report = (sweep / "cv_report.md").read_text()
    assert "## Where the categories overlap" in report and "Cups / Mugs |" in report
    assert "cleanlab (prune_by_noise_rate) doubts" in report
    page = (sweep / "cv_overlap.html").read_text()
    assert "Cups filed as Mugs" in page and page.count("data:image/jpeg;base64,") >= first["confused"]
    rows = list(csv.DictReader((sweep / "cv_overlap.csv").open()))
    assert len([r for r in rows if r["pair"] == "Cups / Mugs"]) == first["confused"]
    relabel = read_relabel(sweep / "cv_overlap.csv", str(root), ["Bags", "Cups", "Mugs", "Pens"])
    assert len(relabel.labels) == len(rows)  # a data.relabel file as it stands
