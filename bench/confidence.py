"""Confidence of a k-fold sweep's models, as predict.py applies it: calibration, operating points
and "none of these" against real out-of-category photos.

    python bench/confidence.py /path/to/sweep [--out result.json]

For every fold run of the sweep (its checkpoint and its test photos, which that model never saw):
``Predictor.from_checkpoint`` with the stored card, run over the fold's test photos and over the
out-of-category photos of ``bench/outside_photos.py`` (written to a temporary folder). Prints the
machine, the pooled out-of-fold ECE before/after (``cv_summary.json``), what
``target_accuracy=0.98`` and ``0.95`` give on the test photos with the thresholds each checkpoint
stored, and the unknown score's AUROC (per fold, and pooled on the margin to each fold's threshold)
with the share of slash5 test photos and of outside photos called unknown at the stored threshold
(the max-softmax AUROC beside it for comparison).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo: bench.outside_photos

from common import machine

from bench.outside_photos import write_outside_photos
from product_cnn.confidence.gate import build_gate
from product_cnn.evaluation.cv import find_fold_runs
from product_cnn.inference.predictor import Predictor


def fold_runs(sweep: Path) -> list[tuple[int, Path, Path, list[tuple[str, str]], str]]:
    """(fold, checkpoint, job dir, [(photo, label)], tta) of each finished fold run."""
    runs = []
    for run in find_fold_runs(sweep):
        if not run.ok:
            continue
        ckpt = next(p for p in (run.job_dir / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt")
        root = Path(run.metrics["data_root"])
        photos = [(str(root / r["path"]), r["label"]) for r in run.rows]
        tta = str(OmegaConf.load(run.job_dir / ".hydra" / "config.yaml").get("tta", "none"))
        runs.append((run.fold, ckpt, run.job_dir, photos, tta))
    return sorted(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--out", type=Path, help="write the numbers as JSON here")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    summary = json.loads((args.sweep / "cv_summary.json").read_text())
    conf = summary.get("confidence")
    if conf:
        print(f"out-of-fold ECE: {conf['ece_before']:.4f} before, {conf['ece_after']:.4f} after (each fold's "
              f"stored temperature); {conf['ece_after_oof_temperature']:.4f} with one temperature fitted "
              "on the other folds")
        for p in conf["operating_points"]:
            print(f"  best possible on the out-of-fold predictions: {p['line']}")
    with tempfile.TemporaryDirectory() as tmp:
        outside = [str(p) for p in write_outside_photos(tmp)]
        print(f"outside photos: {len(outside)} ({sum('made_' in p for p in outside)} made here)")
        result: dict = {"machine": machine(), "sweep": str(args.sweep), "outside": len(outside), "folds": []}
        margins_in, margins_out, filed = [], [], {0.98: [], 0.95: []}
        start = time.perf_counter()
        for fold, ckpt, _, photos, tta in fold_runs(args.sweep):
            predictor = Predictor.from_checkpoint(ckpt, device="cpu", tta=tta)
            if predictor.gate.unknown_threshold is None:
                raise SystemExit(f"error: {ckpt} carries no unknown threshold (trained before calibration?)")
            inside = predictor.predict([p for p, _ in photos], topk=1)
            away = predictor.predict(outside, topk=1)
            threshold = predictor.gate.unknown_threshold
            s_in = np.array([p.similarity for p in inside])
            s_out = np.array([p.similarity for p in away])
            c_in = np.array([p.confidence for p in inside])
            c_out = np.array([p.confidence for p in away])
            y = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
            row = {"fold": fold, "checkpoint": str(ckpt), "threshold": threshold,
                   "auroc": roc_auc_score(y, -np.r_[s_in, s_out]),
                   "auroc_max_softmax": roc_auc_score(y, -np.r_[c_in, c_out]),
                   "slash5_unknown": float((s_in < threshold).mean()),
                   "outside_unknown": float((s_out < threshold).mean())}
            correct = np.array([p.topk[0][0] == label for p, (_, label) in zip(inside, photos, strict=True)])
            for target in filed:
                gate = build_gate(predictor.cards, target_accuracy=target, unknown=False)
                kept = c_in >= gate.min_confidence
                filed[target].append((kept, correct))
                row[f"at_{target}"] = {"threshold": gate.min_confidence, "coverage": float(kept.mean()),
                                       "accuracy": float(correct[kept].mean()) if kept.any() else None}
            margins_in.append(s_in - threshold)
            margins_out.append(s_out - threshold)
            result["folds"].append(row)
            print(f"fold {fold}: unknown below {threshold:.3f}: AUROC {row['auroc']:.4f} (max softmax "
                  f"{row['auroc_max_softmax']:.4f}); unknown: {row['slash5_unknown']:.1%} of its "
                  f"{len(s_in)} test photos, {row['outside_unknown']:.1%} of the outside photos; "
                  f"target 0.98: {row['at_0.98']['coverage']:.0%} filed at accuracy "
                  f"{row['at_0.98']['accuracy'] or 0:.3f}")
        m_in, m_out = np.concatenate(margins_in), np.concatenate(margins_out)
        y = np.r_[np.zeros(len(m_in)), np.ones(len(m_out))]
        result["pooled"] = {"auroc_margin": roc_auc_score(y, -np.r_[m_in, m_out]),
                            "auroc_mean": float(np.mean([r["auroc"] for r in result["folds"]])),
                            "slash5_unknown": float((m_in < 0).mean()),
                            "outside_unknown": float((m_out < 0).mean())}
        for target, parts in filed.items():
            kept = np.concatenate([k for k, _ in parts])
            correct = np.concatenate([c for _, c in parts])
            result["pooled"][f"at_{target}"] = {"coverage": float(kept.mean()),
                                                "accuracy": float(correct[kept].mean())}
        result["seconds"] = time.perf_counter() - start
    p = result["pooled"]
    print(f"pooled: AUROC {p['auroc_mean']:.4f} (mean of folds), {p['auroc_margin']:.4f} (on the margin); "
          f"unknown: {p['slash5_unknown']:.1%} of slash5, {p['outside_unknown']:.1%} of the outside photos")
    for target in filed:
        q = p[f"at_{target}"]
        print(f"target_accuracy={target}: {q['coverage']:.1%} of the test photos filed, "
              f"accuracy {q['accuracy']:.4f}")
    print(f"({result['seconds']:.0f} s)")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
