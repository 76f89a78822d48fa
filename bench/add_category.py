"""Adding a sixth category to a slash5 probe: how long ``extend=`` takes with a warm feature cache,
and what a sixth class does to the five old classes' out-of-fold accuracy.

    python bench/add_category.py [--work /tmp/add_category] [--experiment probe] [--folds 5]

The shop's folder is a scratch tree (never next to the photos): slash5's five class folders as
symlinks to its photos, then a sixth folder, ``Other``, of the 30 photos of
``bench/outside_photos.py``. Steps, each a ``python train.py`` process, wall time printed:
1. the five-class probe (its features cached; its checkpoint is the one extended);
2. ``extend=<that checkpoint>`` with the sixth folder added: the goal is <= 15 s, warm;
3. with ``--folds``: a k-fold sweep of the five classes and one of the six (same folds for the old
   photos), and the old classes' pooled out-of-fold accuracy in each.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench.outside_photos

from common import SLASH5, machine
from paired import mcnemar

from bench.outside_photos import write_outside_photos

REPO = Path(__file__).resolve().parents[1]


def train(*overrides: str, out: Path) -> float:
    """Run train.py with ``overrides``; its wall seconds (exit on failure, with its last lines)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), *overrides, f"hydra.run.dir={out}",
                           f"hydra.sweep.dir={out}"], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"train.py {' '.join(overrides)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start


def old_class_answers(sweep: Path, old: list[str]) -> dict[str, bool]:
    """Whether each old-class photo's out-of-fold prediction was right, by photo."""
    with (sweep / "oof_predictions.csv").open() as handle:
        return {r["path"]: r["predicted"] == r["label"] for r in csv.DictReader(handle) if r["label"] in old}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/add_category"))
    parser.add_argument("--experiment", default="probe")
    parser.add_argument("--folds", type=int, default=0)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    shutil.rmtree(args.work, ignore_errors=True)
    tree = args.work / "photos"
    old = sorted(p.name for p in SLASH5.iterdir() if p.is_dir())
    for name in old:
        (tree / name).mkdir(parents=True)
        for photo in sorted((SLASH5 / name).iterdir()):
            (tree / name / photo.name).symlink_to(photo)
    preset = [f"experiment={args.experiment}", f"paths.cache_dir={args.work / 'cache'}"]
    seconds = train(*preset, f"data.root={tree}", out=args.work / "five")
    ckpt = args.work / "five" / "checkpoints" / "probe.ckpt"
    print(f"1. five classes, features cold: {seconds:.1f} s")
    write_outside_photos(tree / "Other")
    photos = len(list((tree / "Other").iterdir()))
    seconds = train(*preset, f"data.root={tree}", f"extend={ckpt}", out=args.work / "six")
    print(f"2. extend= with a sixth class of {photos} photos, features warm: {seconds:.1f} s (goal <= 15 s)")
    print((args.work / "six" / "extension.md").read_text())
    if args.folds:
        shutil.move(str(tree / "Other"), str(args.work / "Other"))
        sweep = [f"data.folds={args.folds}", f"data.fold=range({args.folds})"]
        five = train("-m", *preset, f"data.root={tree}", *sweep, out=args.work / "cv_five")
        shutil.move(str(args.work / "Other"), str(tree / "Other"))
        six = train("-m", *preset, f"data.root={tree}", *sweep, out=args.work / "cv_six")
        a, b = (old_class_answers(args.work / s, old) for s in ("cv_five", "cv_six"))
        if a.keys() != b.keys():
            raise SystemExit(f"the two sweeps predicted different photos ({len(a)} and {len(b)})")
        only_five = sum(a[k] and not b[k] for k in a)
        only_six = sum(b[k] and not a[k] for k in a)
        acc_a, acc_b = sum(a.values()) / len(a), sum(b.values()) / len(b)
        print(f"3. {args.folds}-fold out of fold, the {len(a)} photos of the five old classes: accuracy "
              f"{acc_a:.3f} with five classes ({five:.0f} s), {acc_b:.3f} with six ({six:.0f} s): "
              f"{100 * (acc_b - acc_a):+.1f} points (goal: within 1); right only with five {only_five}, "
              f"only with six {only_six}, McNemar p = {mcnemar(only_five, only_six):.3f}")


if __name__ == "__main__":
    main()
