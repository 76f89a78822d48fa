"""One markdown table from several cross-validation sweeps (their cv_summary.json).

    python bench/cv_table.py outputs/train/multirun_A outputs/train/multirun_B ...
    python bench/cv_table.py --ensemble outputs/train/multirun_A outputs/train/multirun_B
    python bench/cv_table.py --merge merged/ outputs/train/multirun_A outputs/train/multirun_B

A row per sweep (per setting, when a sweep holds several): its overrides, completed folds,
accuracy and macro F1 as mean +- sd over the folds, and the pooled out-of-fold accuracy and
macro F1. Used to compare settings on the same folds (same data and data.split_seed).
With ``--ensemble``, one more row: the sweeps' models averaged (each photo's out-of-fold
probabilities, see product_cnn.evaluation.cv.ensemble_summary), with its per-fold accuracies and,
when the sweeps were calibrated, its out-of-fold ECE and operating points.
With ``--merge OUT``: the folds of several sweeps of one setting (e.g. folds 0-2 of a screen and
folds 3-4 run later with the same overrides) linked into the new folder OUT (nothing is copied
or moved) and summarised there as one sweep; a fold that two sweeps both ran is refused.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from product_cnn.evaluation.cv import ensemble_summary, find_fold_runs, write_cv_summary


def rows(sweep: Path) -> list[dict]:
    files = [sweep / "cv_summary.json"] if (sweep / "cv_summary.json").is_file() else \
        sorted(sweep.glob("cv_*/cv_summary.json"))
    return [json.loads(f.read_text()) for f in files]


def line(s: dict) -> str:
    m, pooled = s["mean_sd"], s.get("pooled", {})
    hidden = ("data.folds", "data.root", "callbacks.rich")
    setting = " ".join(o for o in s["setting"] if not o.startswith(hidden))
    pooled_f1 = pooled.get("macro", {}).get("f1", float("nan"))
    return (f"| `{setting or 'default'}` | {len(s['completed'])}/{s['folds']} | "
            f"{m['accuracy']['mean']:.3f} +- {m['accuracy']['sd']:.3f} | "
            f"{m['macro_f1']['mean']:.3f} +- {m['macro_f1']['sd']:.3f} | "
            f"{pooled.get('accuracy', float('nan')):.3f} | {pooled_f1:.3f} |")


def merge(out: Path, sweeps: list[Path]) -> Path:
    """Link the fold runs of ``sweeps`` into ``out`` (a new folder) and write its summary there."""
    if out.exists():
        raise SystemExit(f"--merge {out}: the folder exists; give a new one")
    runs = [(sweep, run) for sweep in sweeps for run in find_fold_runs(sweep)]
    seen: dict[tuple, Path] = {}
    for sweep, run in runs:
        key = (run.setting, run.fold)
        if key in seen:
            raise SystemExit(f"fold {run.fold} of {' '.join(run.setting)} is in {seen[key]} and {sweep}")
        seen[key] = sweep
    out.mkdir(parents=True)
    for i, (_, run) in enumerate(runs):
        (out / str(i)).symlink_to(run.job_dir.resolve(), target_is_directory=True)
    write_cv_summary(out)
    return out


def main() -> None:
    args = sys.argv[1:]
    ensemble = "--ensemble" in args
    if "--merge" in args:
        i = args.index("--merge")
        out, sweeps = Path(args[i + 1]), [Path(a) for a in args[i + 2:] + args[:i]]
        args = [str(merge(out, sweeps))]
    sweeps = [Path(a) for a in args if a != "--ensemble"]
    if not sweeps or (ensemble and len(sweeps) < 2):
        raise SystemExit(__doc__)
    print("| setting | folds | accuracy | macro F1 | pooled accuracy | pooled macro F1 |")
    print("|---|---|---|---|---|---|")
    for sweep in sweeps:
        for s in rows(sweep):
            print(line(s))
    if ensemble:
        s = ensemble_summary(sweeps)
        print(line(s))
        print("\nensemble per fold: " + ", ".join(f"{f['fold']}: {f['accuracy']:.3f}" for f in s["per_fold"]))
        if "confidence" in s:
            from product_cnn.evaluation.confidence_report import confidence_lines

            print("\n" + "\n".join(confidence_lines(s["confidence"])))
            cross = s["confidence"]["ece_after_oof_temperature"]
            print(f"one temperature fitted on the other folds: ECE {cross:.4f}")


if __name__ == "__main__":
    main()
