"""One markdown table from several cross-validation sweeps (their cv_summary.json).

    python bench/cv_table.py outputs/train/multirun_A outputs/train/multirun_B ...

A row per sweep (per setting, when a sweep holds several): its overrides, completed folds,
accuracy and macro F1 as mean +- sd over the folds, and the pooled out-of-fold accuracy and
macro F1. Used to compare settings on the same folds (same data and data.split_seed).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rows(sweep: Path) -> list[dict]:
    files = [sweep / "cv_summary.json"] if (sweep / "cv_summary.json").is_file() else \
        sorted(sweep.glob("cv_*/cv_summary.json"))
    return [json.loads(f.read_text()) for f in files]


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    print("| setting | folds | accuracy | macro F1 | pooled accuracy | pooled macro F1 |")
    print("|---|---|---|---|---|---|")
    for sweep in map(Path, sys.argv[1:]):
        for s in rows(sweep):
            m, pooled = s["mean_sd"], s.get("pooled", {})
            setting = " ".join(o for o in s["setting"] if not o.startswith(("data.folds", "data.root",
                                                                             "callbacks.rich")))
            pooled_f1 = pooled.get("macro", {}).get("f1", float("nan"))
            print(f"| `{setting or 'default'}` | {len(s['completed'])}/{s['folds']} | "
                  f"{m['accuracy']['mean']:.3f} +- {m['accuracy']['sd']:.3f} | "
                  f"{m['macro_f1']['mean']:.3f} +- {m['macro_f1']['sd']:.3f} | "
                  f"{pooled.get('accuracy', float('nan')):.3f} | {pooled_f1:.3f} |")


if __name__ == "__main__":
    main()
