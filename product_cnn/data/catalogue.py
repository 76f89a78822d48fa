"""The photo catalogue: which photos there are, their labels and their split, as a plain object.

Scan a folder (either layout, :mod:`product_cnn.data.folder`) or a ``path,label`` CSV
(:mod:`product_cnn.data.listing`), apply label corrections (``relabel``,
:mod:`product_cnn.data.relabel`), check every photo (unreadable files, sizes, near-duplicate
groups: :mod:`product_cnn.data.check`), split it (stratified, or fold ``fold`` of ``folds`` as the
test split, or every photo tested with ``test_all``) keeping near-duplicates together, and add
``extra`` training photos (:mod:`product_cnn.data.extra`). The data check, shard preparation,
calibration and the reports read it; the Lightning data modules only turn it into batches.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from product_cnn.data.cache import default_cache_dir
from product_cnn.data.check import TreeCheck, check_report, check_tree
from product_cnn.data.extra import Extra, read_extra
from product_cnn.data.folder import SPLITS, FolderTree, Sample, scan_tree
from product_cnn.data.folds import assign_folds, check_fold, kfold_split
from product_cnn.data.listing import is_listing, scan_listing
from product_cnn.data.relabel import Relabel, apply_relabel, read_relabel
from product_cnn.data.split import stratified_split
from product_cnn.errors import DataError

log = logging.getLogger(__name__)


class PhotoCatalogue:
    """The photos under ``root`` (a folder or a CSV), labelled, checked and split by :meth:`load`.

    ``classes`` fixes the class list (a checkpoint's): class folders are matched to it by name, a
    folder may hold a subset, and an unknown folder is refused.
    """

    OPTIONS = ("root", "classes", "val_fraction", "test_fraction", "split_seed", "check", "skip_bad_images",
               "group_duplicates", "same_photo", "test_all", "folds", "fold", "relabel", "extra")

    def __init__(self, root: str | Path, *, classes: Sequence[str] | None = None, val_fraction: float = 0.2,
                 test_fraction: float = 0.1, split_seed: int = 42, check: bool = True,
                 skip_bad_images: bool = False, group_duplicates: bool = True, test_all: bool = False,
                 folds: int | None = None, fold: int = 0, relabel: str | None = None,
                 extra: str | None = None, cache_dir: str | None = None, same_photo: Any = None) -> None:
        if not root:
            raise DataError("no data folder given: set data.root=/path/to/photos")
        if folds is not None:
            check_fold(folds, fold)
            if test_all:
                raise DataError("data.folds and data.test_all exclude each other: a fold is the test split")
        self.root = str(Path(root).expanduser().resolve())
        self.classes = list(classes) if classes is not None else None
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.check_photos, self.skip_bad_images = check, skip_bad_images
        self.group_duplicates = group_duplicates
        self.same_photo = same_photo_finder(same_photo)
        self.test_all, self.folds, self.fold = test_all, folds, fold
        self.relabel_file = str(Path(relabel).expanduser().resolve()) if relabel else None
        self.extra_file = str(Path(extra).expanduser().resolve()) if extra else None
        self.cache_dir = cache_dir or default_cache_dir()  # where the check's results are kept
        self.tree: FolderTree | None = None
        self.check: TreeCheck | None = None
        self.relabel: Relabel | None = None
        self.extra: Extra | None = None
        self.split_samples: dict[str, list[Sample]] = {}

    def options(self) -> dict[str, Any]:
        """The options as given (plain values: a checkpoint records them)."""
        return {"root": self.root, "classes": self.classes, "val_fraction": self.val_fraction,
                "test_fraction": self.test_fraction, "split_seed": self.split_seed,
                "check": self.check_photos, "skip_bad_images": self.skip_bad_images,
                "group_duplicates": self.group_duplicates,
                "same_photo": self.same_photo.options() if self.same_photo is not None else None,
                "test_all": self.test_all, "folds": self.folds,
                "fold": self.fold, "relabel": self.relabel_file, "extra": self.extra_file}

    @property
    def loaded(self) -> bool:
        return self.tree is not None

    def load(self) -> PhotoCatalogue:
        """Scan, relabel, check, split and add the extra photos (once); return self."""
        if self.tree is not None:
            return self
        tree = self._scan()
        if self.folds is not None and tree.presplit:
            raise DataError(f"data.folds needs one folder per class: {self.root} is already split into "
                            "train/val/test (cross-validate the unsplit photos instead)")
        if self.relabel_file:
            self.relabel = read_relabel(self.relabel_file, self.root, tree.class_names)
            apply_relabel(tree, self.relabel)
        if self.check_photos:
            self.check = check_tree(tree, self.cache_dir, self.skip_bad_images, self.same_photo)
            self._log_duplicates(tree.presplit)
        self.tree, self.split_samples = tree, self._split(tree, self.groups)
        if self.extra_file and not self.test_all:
            known = {os.path.abspath(p) for samples in tree.splits.values() for p, _ in samples}
            self.extra = read_extra(self.extra_file, tree.class_names, known)
            self.split_samples["train"] = sorted(self.split_samples.get("train", []) + self.extra.samples)
        if tree.ignored:
            log.warning("Ignored %d non-image file(s) in %s, e.g. %s", len(tree.ignored), self.root,
                        tree.ignored[0])
        return self

    @property
    def class_names(self) -> list[str]:
        if self.tree is None:
            raise RuntimeError("call load() (a data module: setup()) before asking for class names")
        return self.tree.class_names

    def peek_class_names(self) -> list[str]:
        """The class names from a scan of ``root`` alone (no check, no split)."""
        return (self.tree or self._scan()).class_names

    def _scan(self) -> FolderTree:
        """The folder's (or the CSV's) photos and labels, unchecked and unsplit."""
        scan = scan_listing if is_listing(self.root) else scan_tree
        return scan(self.root, self.classes)

    @property
    def groups(self) -> list[list[str]]:
        """The near-duplicate groups kept within one split (difference hash and same photo; none
        unchecked or not grouped)."""
        return self.check.all_groups if self.check is not None and self.group_duplicates else []

    @property
    def paths(self) -> list[str]:
        """Every photo of every split, sorted."""
        return sorted({path for samples in self.split_samples.values() for path, _ in samples})

    def _split(self, tree: FolderTree, groups: list[list[str]]) -> dict[str, list[Sample]]:
        if tree.presplit:
            splits = dict(tree.splits)
            missing = [s for s in ("val", "test") if s not in splits]
            if missing:  # carve the missing splits out of train, stratified
                fractions = {s: (self.val_fraction if s == "val" else self.test_fraction) for s in missing}
                carved = stratified_split(splits["train"], tree.class_names, self.root,
                                          val_fraction=fractions.get("val", 0.0),
                                          test_fraction=fractions.get("test", 0.0),
                                          seed=self.split_seed, groups=groups)
                splits["train"] = carved["train"]
                splits.update({s: carved[s] for s in missing})
                log.info("No %s folder in %s: split it from train", "/".join(missing), self.root)
            return splits
        if self.test_all:
            return {"train": [], "val": [], "test": sorted(tree.splits["all"])}
        if self.folds is not None:
            return kfold_split(tree.splits["all"], tree.class_names, self.root, folds=self.folds,
                               fold=self.fold,
                               val_fraction=self.val_fraction, seed=self.split_seed, groups=groups)
        return stratified_split(tree.splits["all"], tree.class_names, self.root,
                                val_fraction=self.val_fraction, test_fraction=self.test_fraction,
                                seed=self.split_seed, groups=groups)

    def fold_of(self, folds: int | None) -> dict[str, int]:
        """Each photo's fold under ``data.folds=folds`` as training computes it (unsplit trees only)."""
        if not folds or self.tree is None or self.tree.presplit or self.test_all:
            return {}
        every = [s for samples in self.split_samples.values() for s in samples]
        return assign_folds(every, self.class_names, self.root, folds=folds, seed=self.split_seed,
                            groups=self.groups)

    def counts(self) -> dict[str, list[int]]:
        """Photos per class for each split: ``{"train": [n_class0, ...], ...}``."""
        out = {}
        for split in SPLITS:
            per_class = [0] * len(self.class_names)
            for _, label in self.split_samples.get(split, []):
                per_class[label] += 1
            out[split] = per_class
        return out

    def how_split(self) -> str:
        """How the photos were split, in words."""
        if self.tree is not None and self.tree.presplit:
            return "pre-split"
        if self.test_all:
            return "every photo is tested"
        if self.folds is not None:
            return (f"fold {self.fold} of {self.folds} folds (0..{self.folds - 1}) is the test split, "
                    f"{self.val_fraction:.0%} of the rest validates, seed {self.split_seed}")
        return (f"split {1 - self.val_fraction - self.test_fraction:.0%}/{self.val_fraction:.0%}/"
                f"{self.test_fraction:.0%}, seed {self.split_seed}")

    def describe(self) -> str:
        """``Data: <root> (<how it was split>)``, the corrections and extra photos, and the count table."""
        relabel = f"\n  {self.relabel.summary()}" if self.relabel is not None else ""
        extra = f"\n  {self.extra.summary()}" if self.extra is not None else ""
        table = count_table(self.class_names, self.counts())
        return f"Data: {self.root} ({self.how_split()}){relabel}{extra}\n{table}"

    def check_report(self, show_groups: int) -> str:
        """check_data.py's findings (unreadable photos, sizes, near-duplicates), after a quiet load."""
        level = log.level
        log.setLevel(logging.WARNING)  # its INFO lines (groups) are all in the report
        try:
            self.load()
        finally:
            log.setLevel(level)
        found = check_report(self.check, self.tree, self.split_samples, grouped=self.group_duplicates,
                             show_groups=show_groups)
        return self.describe() + "\n" + found

    def state_dict(self) -> dict[str, Any]:
        """The label corrections and extra photos used, if any (saved with every checkpoint)."""
        state: dict[str, Any] = {}
        if self.relabel is not None:
            r = self.relabel
            state["relabel"] = {"file": r.file, "relabelled": r.relabelled, "excluded": r.excluded,
                                "labels": dict(r.labels)}
        if self.extra is not None:
            names = self.class_names
            state["extra"] = {"file": self.extra.file, "skipped": self.extra.skipped,
                              "labels": {p: names[label] for p, label in self.extra.samples}}
        return state

    def _log_duplicates(self, presplit: bool) -> None:
        check = self.check
        if check is None or not check.all_groups:
            return
        groups = check.all_groups
        photos = sum(len(g) for g in groups)
        if check.same_photo:
            log.info("Same photo in another crop (%s): %d group(s) of %d photos", check.same_photo_rule,
                     len(check.same_photo), sum(len(g) for g in check.same_photo))
        if presplit:
            log.info("Near-duplicates: %d group(s) of %d photos", len(groups), photos)
            for where in check.leaks[:10]:
                log.warning("Near-duplicates in several splits (leakage): %s",
                            "; ".join(f"{s}: {', '.join(p)}" for s, p in sorted(where.items())))
        elif self.test_all:  # one split: nothing to keep apart
            log.info("Near-duplicates: %d group(s) of %d photos", len(groups), photos)
        else:
            kept = "each kept within one split" if self.group_duplicates else \
                "NOT kept together (data.group_duplicates=false)"
            log.info("Near-duplicates: %d group(s) of %d photos, %s", len(groups), photos, kept)


def same_photo_finder(same_photo: Any) -> Any:
    """``data.same_photo``: off (None, false), a finder (Hydra made it from the data config), or a
    checkpoint's record of one (a dict with ``_target_``: made again here)."""
    if not same_photo:
        return None
    if isinstance(same_photo, dict):
        from hydra.utils import instantiate

        return instantiate(same_photo, _convert_="all")
    if not callable(getattr(same_photo, "groups", None)):
        raise DataError(f"data.same_photo={same_photo!r}: null, or a finder such as "
                        "{_target_: product_cnn.models.same_photo.SamePhotoFinder, threshold: 0.92}")
    return same_photo


def count_table(class_names: Sequence[str], counts: dict[str, list[int]]) -> str:
    """A small per-class, per-split table of photo counts."""
    width = max(len(n) for n in [*class_names, "class", "total"])
    lines = [f"  {'class':<{width}} " + " ".join(f"{s:>6}" for s in SPLITS)]
    for i, name in enumerate(class_names):
        lines.append(f"  {name:<{width}} " + " ".join(f"{counts[s][i]:>6}" for s in SPLITS))
    lines.append(f"  {'total':<{width}} " + " ".join(f"{sum(counts[s]):>6}" for s in SPLITS))
    return "\n".join(lines)
