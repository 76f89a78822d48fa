"""Time a k-fold sweep on slash5 as a user runs it, and print its cross-validated numbers.

    python bench/cv_sweep.py experiment=probe                     # the 5-fold probe, cold caches
    python bench/cv_sweep.py experiment=finetune --folds 0,1,2    # a 3-fold screen
    python bench/cv_sweep.py experiment=probe --warm              # with the caches already filled

Runs ``python train.py -m <overrides> data.folds=5 data.fold=<folds>`` as a subprocess (the real
command, start-up included) and prints the machine, the sweep's wall time, each fold's wall time
(from its train.log) and accuracy / macro F1 (``cv_summary.json``). By default the decoded-image
and feature caches start empty (``PRODUCT_CNN_CACHE`` in a temporary folder): decoding slash5
takes a few seconds of that; ``--warm`` runs the sweep once first and times the second run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from common import machine

REPO = Path(__file__).resolve().parents[1]
SLASH5 = REPO.parent / "shared" / "data" / "slash5"
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+)\]")


def sweep(overrides: list[str], folds: str, out: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "train.py"), "-m", *overrides, f"data.root={SLASH5}",
                    "data.folds=5", f"data.fold={folds}", f"hydra.sweep.dir={out}",
                    "callbacks.rich_progress_bar=null"], check=True, env=env, cwd=REPO,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def fold_seconds(job: Path) -> float | None:
    """First to last timestamp of a job's train.log."""
    stamps = [STAMP.match(line) for line in (job / "train.log").read_text().splitlines()]
    times = [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f") for m in stamps if m]
    return (times[-1] - times[0]).total_seconds() if len(times) > 1 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="train.py overrides, e.g. experiment=probe")
    parser.add_argument("--folds", default="0,1,2,3,4", help="which of the 5 folds (default: all)")
    parser.add_argument("--warm", action="store_true", help="time a second run, caches filled")
    args = parser.parse_args()
    if not SLASH5.is_dir():
        raise SystemExit(f"needs the photos at {SLASH5}")
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PRODUCT_CNN_CACHE": str(Path(tmp) / "cache")}
        if args.warm:
            sweep(args.overrides, args.folds, Path(tmp) / "warm-up", env)
        out = Path(tmp) / "sweep"
        wall = sweep(args.overrides, args.folds, out, env)
        summary = json.loads((out / "cv_summary.json").read_text())
        jobs = sorted((p for p in out.iterdir() if (p / "train.log").is_file()), key=lambda p: int(p.name))
        per_fold = [fold_seconds(j) for j in jobs]
    mean = summary["mean_sd"]
    caches = "warm" if args.warm else "cold"
    print(f"{' '.join(args.overrides)}  folds {args.folds}  ({caches} caches)")
    print(f"sweep wall time {wall:.1f} s (start-up included); per fold: "
          + ", ".join(f"{s:.1f} s" if s is not None else "?" for s in per_fold))
    print(f"accuracy {mean['accuracy']['mean']:.3f} +- {mean['accuracy']['sd']:.3f}  "
          f"macro F1 {mean['macro_f1']['mean']:.3f} +- {mean['macro_f1']['sd']:.3f}  per fold: "
          + ", ".join(f"{f['accuracy']:.3f}" for f in summary["per_fold"]))


if __name__ == "__main__":
    main()
