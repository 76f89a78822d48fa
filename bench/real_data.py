"""Imbalance and augmentation options on the real photos, several seeds: which one helps?

    python bench/real_data.py                                  # GPU if present, 50 epochs, 3 seeds
    python bench/real_data.py --epochs 50 --seeds 0,1,2 --options none,weighted_loss,sampler,light,strong

Trains the project's default setup (``python train.py data=folder data.root=<slash5>``) once
per option and seed, each through ``product_cnn.tasks.train`` exactly as the command does
(best checkpoint by val/acc, then tested), and prints test accuracy, macro F1 and per-class
recall as mean +- standard deviation over the seeds. Options:

* none:           the default (no class balancing, no augmentation)
* weighted_loss:  data.balance=weighted_loss
* sampler:        data.balance=sampler
* light / strong: data.augment=light / strong

The split is the same for every run (data.split_seed=42); the seed changes initialisation,
order, dropout and augmentation. slash5's test split is small (47 photos), so differences
below about two standard deviations are noise. Each finished run is appended to --jsonl.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from product_cnn.config import compose_config
from product_cnn.tasks import train

SLASH5 = Path(__file__).resolve().parents[2] / "shared" / "data" / "slash5"
OPTIONS = {
    "none": [],
    "weighted_loss": ["data.balance=weighted_loss"],
    "sampler": ["data.balance=sampler"],
    "light": ["data.augment=light"],
    "strong": ["data.augment=strong"],
}


def run_one(root: Path, option: str, seed: int, epochs: int, extra: list[str], workdir: Path) -> dict:
    overrides = [
        "data=folder", f"data.root={root}", f"seed={seed}", f"trainer.max_epochs={epochs}",
        "callbacks.rich_progress_bar=null", "callbacks.model_summary=null",
        "callbacks.val_confusion_matrix=null", "callbacks.test_prediction_grid=null", "logger=csv",
        *OPTIONS[option], *extra,
    ]
    out = workdir / f"{option}_{seed}"
    cfg = compose_config("train", overrides, out, workdir / "cache")
    start = time.perf_counter()
    train(cfg)
    report = json.loads((out / "metrics.json").read_text())
    return {
        "option": option, "seed": seed, "epochs": epochs, "seconds": time.perf_counter() - start,
        "acc": report["accuracy"], "macro_f1": report["macro"]["f1"],
        "recall": {name: row["recall"] for name, row in report["per_class"].items()},
    }


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f}+-{sd:.3f}"


def table(results: list[dict]) -> str:
    names = list(results[0]["recall"])
    header = "| option | runs | test acc | macro F1 | " + " | ".join(f"recall {n}" for n in names) + " |"
    lines = [header, "|" + "---|" * (4 + len(names))]
    for option in dict.fromkeys(r["option"] for r in results):
        rows = [r for r in results if r["option"] == option]
        cells = [mean_sd([r["acc"] for r in rows]), mean_sd([r["macro_f1"] for r in rows])]
        cells += [mean_sd([r["recall"][n] for r in rows]) for n in names]
        lines.append(f"| {option} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=SLASH5)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--options", default=",".join(OPTIONS))
    parser.add_argument("--jsonl", type=Path, default=Path("real_data.jsonl"))
    parser.add_argument("overrides", nargs="*", help="more train.py overrides, e.g. data.num_workers=8")
    args = parser.parse_args()
    if not args.root.is_dir():
        raise SystemExit(f"error: no photos at {args.root} (pass --root)")
    extra = list(args.overrides)
    if torch.cuda.is_available() and not any(o.startswith("trainer=") for o in extra):
        extra.append("trainer=gpu")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (int(s) for s in args.seeds.split(",")):  # seed-major: a cut-short run
            for option in args.options.split(","):               # still covers every option
                result = run_one(args.root, option, seed, args.epochs, extra, Path(tmp))
                results.append(result)
                with open(args.jsonl, "a") as f:
                    f.write(json.dumps(result) + "\n")
                print(f"{option:14} seed {seed}: acc {result['acc']:.3f} macro F1 {result['macro_f1']:.3f} "
                      f"({result['seconds']:.0f} s)", flush=True)
    print(f"\n{args.root}, {args.epochs} epochs, seeds {args.seeds}\n{table(results)}")


if __name__ == "__main__":
    main()
