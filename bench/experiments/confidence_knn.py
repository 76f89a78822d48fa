"""Would the nearest training photos rank a probe's predictions better than its softmax? (The
next step of docs/confidence.md: measured here, not built into predict.py.)

    python bench/experiments/confidence_knn.py /path/to/probe_sweep [--data-root ../shared/data/slash5]

Reads the sweep's ``oof_predictions.csv`` and the probe's cached backbone features
(``<cache>/features/*.pt``, the file that holds every photo of the sweep). For each fold: the
similarity-weighted vote of the 10 nearest training photos (softmax of cosine / 0.05) of each
test photo. Prints, for the head alone, the vote alone and mixtures of the two: out-of-fold
accuracy and the share of photos filed at accuracy >= 0.98 and >= 0.95 with the best threshold.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/common.py

from common import SLASH5, machine

from product_cnn.confidence.coverage import threshold_for_accuracy
from product_cnn.data.cache import default_cache_dir
from product_cnn.data.feature_cache import FeatureCache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--data-root", type=Path, default=SLASH5)
    parser.add_argument("--cache", type=Path, default=Path(default_cache_dir()))
    args = parser.parse_args()
    print(f"machine: {machine()}")
    rows = list(csv.DictReader((args.sweep / "oof_predictions.csv").open()))
    names = [c.removeprefix("prob_") for c in rows[0] if c.startswith("prob_")]
    keys = [FeatureCache.photo_key(str(args.data_root / r["path"])) for r in rows]
    for file in sorted((args.cache / "features").glob("*.pt")):
        entries = torch.load(file, map_location="cpu", weights_only=True)
        if all(k in entries for k in keys):
            break
    else:
        raise SystemExit(f"error: no cache in {args.cache}/features holds every photo of {args.sweep}")
    x = F.normalize(torch.stack([entries[k] for k in keys]).float(), dim=1)
    y = torch.tensor([names.index(r["label"]) for r in rows])
    head = torch.tensor([[float(r[f"prob_{n}"]) for n in names] for r in rows])
    fold = torch.tensor([int(r["fold"]) for r in rows])
    vote = torch.zeros_like(head)
    for k in fold.unique():
        test, train = fold == k, fold != k
        top = (x[test] @ x[train].T).topk(10, dim=1)
        vote[test] = torch.zeros(int(test.sum()), len(names)).scatter_add_(
            1, y[train][top.indices], torch.softmax(top.values / 0.05, dim=1))
    print(f"{len(rows)} photos, {len(fold.unique())} folds, features {file.name}")
    for share in (0.0, 0.3, 0.5, 0.7, 1.0):
        confidence, predicted = ((1 - share) * head + share * vote).max(1)
        correct = predicted == y
        filed = [threshold_for_accuracy(confidence, correct, t) for t in (0.98, 0.95)]
        cover = ", ".join(f"{f[1]:.1%}" if f else "none" for f in filed)
        accuracy = float(correct.float().mean())
        print(f"vote share {share:.1f}: accuracy {accuracy:.3f}; filed at 0.98, 0.95: {cover}")


if __name__ == "__main__":
    main()
