"""Stratified, seeded train/val/test split that does not depend on file-system order.

Within each class, files are ordered by a hash of (seed, path relative to the root), then cut
into test, val and train. The result depends only on the seed and the set of files: not on
listing order, not on where the tree lives, and adding one photo does not reshuffle the rest.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from collections.abc import Sequence

from product_cnn.data.folder import Sample
from product_cnn.errors import DataError


def order_key(seed: int, relpath: str) -> str:
    return hashlib.sha256(f"{seed}:{relpath}".encode()).hexdigest()


def relkey(path: str, root: str) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """(train, val, test) sizes for a class of ``n`` images; each used split gets at least 1."""
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    return n - n_val - n_test, n_val, n_test


def min_class_size(val_fraction: float, test_fraction: float) -> int:
    """Fewest images a class needs so that every split gets one (and train keeps one)."""
    return 1 + (val_fraction > 0) + (test_fraction > 0)


def stratified_split(
    samples: Sequence[Sample],
    class_names: Sequence[str],
    root: str,
    *, val_fraction: float = 0.2,
    test_fraction: float = 0.1,
    seed: int = 42,
    groups: Sequence[Sequence[str]] = (),
) -> dict[str, list[Sample]]:
    """Split ``samples`` into ``{"train", "val", "test"}`` per class; raise if a class is too small.

    ``groups`` are lists of paths that must stay together (near-duplicate photos of one
    product): each group goes to one split as a whole, counted in the class of most of its
    photos. Without groups every photo is its own unit.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise DataError(
            f"split fractions val={val_fraction} test={test_fraction} must be >= 0 and sum to < 1"
        )
    by_class: dict[int, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_class[sample[1]].append(sample)
    needed = min_class_size(val_fraction, test_fraction)
    too_small = [
        f"{class_names[label]} ({len(items)})"
        for label, items in sorted(by_class.items()) if len(items) < needed
    ]
    if too_small:
        raise DataError(
            f"class(es) {', '.join(too_small)} have too few images for a stratified "
            f"train/val/test split: each needs at least {needed}"
        )
    units_by_class = class_units(samples, groups)
    too_few_units = [f"{class_names[label]} ({len(units_by_class[label])})" for label in sorted(by_class)
                     if len(units_by_class[label]) < needed]
    if too_few_units:
        raise DataError(
            f"class(es) {', '.join(too_few_units)} have too few distinct photos once near-duplicates "
            f"are kept together: each needs at least {needed} (check_data.py lists the groups; "
            "data.same_photo=null groups by the difference hash only, data.group_duplicates=false not at all)"
        )
    out: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    for label in sorted(units_by_class):
        ordered = sorted(units_by_class[label], key=lambda u: order_key(seed, relkey(u[0][0], root)))
        total = sum(len(u) for u in ordered)
        _, n_val, n_test = split_counts(total, val_fraction, test_fraction)
        remaining = list(ordered)
        for split, target in (("test", n_test), ("val", n_val)):
            taken = 0
            # leave one unit for each split still to fill (val, then train)
            while taken < target and len(remaining) > (1 if split == "val" else 1 + (n_val > 0)):
                unit = remaining.pop(0)
                out[split] += unit
                taken += len(unit)
        for unit in remaining:
            out["train"] += unit
    for split in out:
        out[split].sort()
    return out


def class_units(samples: Sequence[Sample], groups: Sequence[Sequence[str]]) -> dict[int, list[list[Sample]]]:
    """:func:`sample_units` by class: a unit counts in the class of most of its photos."""
    by_class: dict[int, list[list[Sample]]] = defaultdict(list)
    for unit in sample_units(samples, groups):
        by_class[Counter(label for _, label in unit).most_common(1)[0][0]].append(unit)
    return by_class


def sample_units(samples: Sequence[Sample], groups: Sequence[Sequence[str]]) -> list[list[Sample]]:
    """Samples gathered into units: one per group of paths, one per remaining sample."""
    unit_of = {path: index for index, group in enumerate(groups) for path in group}
    grouped: dict[int, list[Sample]] = defaultdict(list)
    units = []
    for sample in sorted(samples):
        if sample[0] in unit_of:
            grouped[unit_of[sample[0]]].append(sample)
        else:
            units.append([sample])
    return units + [sorted(unit) for unit in grouped.values()]
