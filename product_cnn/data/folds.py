"""k-fold cross-validation splits: stratified, seeded, near-duplicates kept inside one fold.

Within each class, units (a photo, or a group of near-duplicate photos) are ordered by a hash
of (seed, path relative to the root), largest groups first, and each goes to the fold that
has the fewest photos of that class so far. Every photo is in exactly one fold; per class,
folds differ by at most one photo (or the size of the largest group). Fold k is the test
split; validation is carved from the other folds by :func:`stratified_split`, with the same
grouping, and the rest trains.
"""

from __future__ import annotations

from collections.abc import Sequence

from product_cnn.data.folder import Sample
from product_cnn.data.split import class_units, order_key, relkey, stratified_split
from product_cnn.errors import DataError


def check_fold(folds: int, fold: int) -> None:
    """Refuse, in one line, a fold count below 2 or a fold index outside 0..folds-1."""
    if folds < 2:
        raise DataError(f"data.folds={folds}: k-fold cross-validation needs at least 2 folds")
    if not 0 <= fold < folds:
        raise DataError(f"data.fold={fold} is not one of 0..{folds - 1} (data.folds={folds})")


def assign_folds(samples: Sequence[Sample], class_names: Sequence[str], root: str, *, folds: int,
                 seed: int = 42, groups: Sequence[Sequence[str]] = ()) -> dict[str, int]:
    """The fold (0..folds-1) of every sample's path."""
    by_class = class_units(samples, groups)
    too_few = [f"{class_names[label]} ({len(units)})" for label, units in sorted(by_class.items())
               if len(units) < folds]
    if too_few:
        raise DataError(f"class(es) {', '.join(too_few)} have fewer distinct photos than data.folds={folds}: "
                        "use fewer folds or add photos")
    fold_of: dict[str, int] = {}
    for label, units in sorted(by_class.items()):
        ordered = sorted(units, key=lambda u: (-len(u), order_key(seed, relkey(u[0][0], root))))
        counts = [0] * folds
        start = int(order_key(seed, class_names[label])[:8], 16) % folds  # no fold always first
        for unit in ordered:
            target = min(range(folds), key=lambda f: (counts[f], (f - start) % folds))
            counts[target] += len(unit)
            for path, _ in unit:
                fold_of[path] = target
    return fold_of


def kfold_split(samples: Sequence[Sample], class_names: Sequence[str], root: str, *, folds: int, fold: int,
                val_fraction: float = 0.2, seed: int = 42,
                groups: Sequence[Sequence[str]] = ()) -> dict[str, list[Sample]]:
    """``{"train", "val", "test"}`` for fold ``fold`` of ``folds``: the fold is the test split,
    ``val_fraction`` of the other folds' photos (per class) validate, the rest trains."""
    check_fold(folds, fold)
    fold_of = assign_folds(samples, class_names, root, folds=folds, seed=seed, groups=groups)
    test = sorted(s for s in samples if fold_of[s[0]] == fold)
    rest = [s for s in samples if fold_of[s[0]] != fold]
    parts = stratified_split(rest, class_names, root, val_fraction=val_fraction, test_fraction=0.0,
                             seed=seed, groups=groups)
    return {"train": parts["train"], "val": parts["val"], "test": test}
