"""Two k-fold sweeps on the same photos, compared photo by photo: accuracy and macro F1 of each,
the exact McNemar test on the photos one gets right and the other wrong, and the coverage each
reaches at 98% accuracy (from their ``oof_predictions.csv``).

    python bench/paired.py <sweep dir A> <sweep dir B>
"""

from __future__ import annotations

import argparse
import csv
from math import comb
from pathlib import Path


def read(sweep: Path) -> dict[str, tuple[str, str, float]]:
    """path -> (label, predicted, top probability) of a sweep's out-of-fold predictions."""
    with (sweep / "oof_predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    probs = [k for k in rows[0] if k.startswith("prob_")]
    return {r["path"]: (r["label"], r["predicted"], max(float(r[k]) for k in probs)) for r in rows}


def macro_f1(rows: list[tuple[str, str, float]]) -> float:
    classes = sorted({label for label, _, _ in rows})
    scores = []
    for c in classes:
        tp = sum(label == c and pred == c for label, pred, _ in rows)
        fp = sum(label != c and pred == c for label, pred, _ in rows)
        fn = sum(label == c and pred != c for label, pred, _ in rows)
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


def coverage(rows: list[tuple[str, str, float]], target: float = 0.98) -> float:
    """The largest share of photos, most confident first, whose accuracy is >= ``target``."""
    ranked = sorted(rows, key=lambda r: -r[2])
    best, right = 0, 0
    for n, (label, pred, _) in enumerate(ranked, 1):
        right += label == pred
        if right / n >= target:
            best = n
    return best / len(rows)


def mcnemar(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for ``b`` and ``c`` discordant photos."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(comb(n, k) for k in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    args = parser.parse_args()
    a, b = read(args.a), read(args.b)
    if set(a) != set(b):
        raise SystemExit(f"the sweeps hold other photos: {len(set(a) ^ set(b))} differ")
    for name, rows in (("A", a), ("B", b)):
        values = list(rows.values())
        accuracy = sum(label == pred for label, pred, _ in values) / len(values)
        print(f"{name} {getattr(args, name.lower())}: accuracy {accuracy:.3f}, macro F1 "
              f"{macro_f1(values):.3f}, coverage at 0.98 accuracy {coverage(values):.0%}")
    only_a = sum(a[p][0] == a[p][1] and b[p][0] != b[p][1] for p in a)
    only_b = sum(a[p][0] != a[p][1] and b[p][0] == b[p][1] for p in a)
    print(f"{len(a)} photos: right only in A {only_a}, right only in B {only_b}; exact McNemar "
          f"p = {mcnemar(only_a, only_b):.3f}")


if __name__ == "__main__":
    main()
