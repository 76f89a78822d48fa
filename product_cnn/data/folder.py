"""Finding classes and images in an ImageFolder tree, in either supported layout.

* unsplit:   ``root/<Category>/*.jpg``                      (we split it, see :mod:`.split`)
* pre-split: ``root/{train,val,test}/<Category>/*.jpg``     (used as given)
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from product_cnn.data.images import IMG_EXTENSIONS, is_image_file
from product_cnn.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
_IGNORED_DIRS = ("__MACOSX",)

Sample = tuple[str, int]  # (path, label index)


@dataclass
class FolderTree:
    """What :func:`scan_tree` found: class names, samples (per split when pre-split)."""

    root: str
    class_names: list[str]
    splits: dict[str, list[Sample]]  # keys: "all" for an unsplit tree, else a subset of SPLITS
    ignored: list[str] = field(default_factory=list)  # non-image files that were skipped

    @property
    def presplit(self) -> bool:
        return "all" not in self.splits


def _visible(name: str) -> bool:
    """Hidden files and folders and macOS ``__MACOSX`` folders are not photos of anything."""
    return not name.startswith(".") and name not in _IGNORED_DIRS


def _subdirs(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir() and _visible(p.name))


def find_images(directory: str | Path) -> tuple[list[str], list[str]]:
    """Image files under ``directory`` (recursively, sorted) and the other visible files, skipped."""
    found, other = [], []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        for name in sorted(filenames):
            if _visible(name):
                (found if is_image_file(name) else other).append(os.path.join(dirpath, name))
    return sorted(found), other


def _images_in(class_dir: Path, ignored: list[str]) -> list[str]:
    """All image files under ``class_dir``; other files go to ``ignored``."""
    found, other = find_images(class_dir)
    ignored += other
    return found


def _check_root(root: Path) -> None:
    if not root.exists():
        raise DataError(
            f"data root {root} does not exist: set data.root=/path/to/photos "
            "(laid out as <root>/<Category>/*.jpg)"
        )
    if not root.is_dir():
        raise DataError(f"data root {root} is a file, not a folder of class folders")


def _scan_classes(directory: Path, ignored: list[str]) -> dict[str, list[str]]:
    """Map class name -> sorted image paths for ``directory/<Category>/...``, with checks."""
    class_dirs = _subdirs(directory)
    if not class_dirs:
        loose = [p for p in directory.iterdir() if p.is_file() and is_image_file(p)]
        hint = (
            f"found {len(loose)} images directly in it; " if loose else ""
        )
        raise DataError(
            f"no class folders in {directory}: {hint}put each category's photos in "
            f"{directory}/<Category>/"
        )
    images = {d.name: _images_in(d, ignored) for d in class_dirs}
    empty = [name for name, paths in images.items() if not paths]
    if empty:
        names = ", ".join(str(directory / name) for name in empty)
        raise DataError(
            f"class folder(s) with no images: {names} (looked for {', '.join(IMG_EXTENSIONS)}); "
            "add photos or remove the folder"
        )
    return images


def _find_split_dirs(root: Path) -> dict[str, Path]:
    found = {}
    for split, aliases in _SPLIT_ALIASES.items():
        for alias in aliases:
            if (root / alias).is_dir():
                found[split] = root / alias
                break
    return found


def scan_tree(root: str | Path, class_names: Sequence[str] | None = None) -> FolderTree:
    """Scan ``root`` in either layout; raise :class:`DataError` naming what is wrong.

    Class names are the sorted class folders, or ``class_names`` when given (a trained model's):
    then folders are matched to it by name, any subset is fine and an unknown folder is refused.
    """
    root = Path(root).expanduser().resolve()
    _check_root(root)
    ignored: list[str] = []
    split_dirs = _find_split_dirs(root)
    if "train" not in split_dirs:
        images = _scan_classes(root, ignored)
        names = _class_list(images, class_names, root)
        samples = [(p, names.index(name)) for name in sorted(images) for p in images[name]]
        return FolderTree(str(root), names, {"all": samples}, ignored)

    per_split = {split: _scan_classes(path, ignored) for split, path in split_dirs.items()}
    names = _class_list(per_split["train"], class_names, split_dirs["train"])
    for split, images in per_split.items():
        unknown = sorted(set(images) - set(names))
        if unknown:
            raise DataError(
                f"{split_dirs[split]} has class folder(s) {unknown} that {split_dirs['train']} "
                "does not have: every class must have training images"
            )
    splits = {
        split: [(p, names.index(name)) for name in sorted(images) for p in images[name]]
        for split, images in per_split.items()
    }
    return FolderTree(str(root), names, splits, ignored)


def _class_list(images: dict[str, list[str]], known: Sequence[str] | None, where: Path) -> list[str]:
    """The class folders found, sorted; or ``known`` when given, which must include every folder."""
    if known is None:
        names = sorted(images)
        _check_two_classes(names, where)
        return names
    unknown = sorted(set(images) - set(known))
    if unknown:
        raise DataError(
            f"class folder(s) {', '.join(unknown)} in {where} are not among the model's classes "
            f"({', '.join(known)}): rename or remove them"
        )
    return list(known)


def _check_two_classes(class_names: list[str], where: Path) -> None:
    if len(class_names) < 2:
        raise DataError(
            f"found only one class folder ({class_names[0]}) in {where}: a classifier needs "
            "at least two categories, each in its own folder"
        )


def expand_inputs(inputs: str | Path | Iterable[str | Path]) -> list[str]:
    """Files, folders and glob patterns -> the list of files to classify, in order.

    Folders (searched recursively) and patterns give their image files, as the training scan
    finds them; other files there are skipped with a note in the log. A file named explicitly
    is always kept: one that is not an image gets its error in the results. Raises
    :class:`DataError` for a path or pattern that matches nothing.
    """
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    files: list[str] = []
    skipped: list[str] = []
    for item in items:
        text = os.path.expanduser(str(item))
        if os.path.isdir(text):
            images, other = find_images(text)
            files += images
            skipped += other
        elif os.path.isfile(text):
            files.append(text)
        elif glob.has_magic(text):
            matches = sorted(p for p in glob.glob(text, recursive=True) if os.path.isfile(p))
            if not matches:
                raise DataError(f"no files match {text}")
            files += [p for p in matches if is_image_file(p)]
            skipped += [p for p in matches if not is_image_file(p)]
        else:
            raise DataError(f"input {text} does not exist")
    if skipped:
        log.info("Skipped %d file(s) that are not images (by their extension), e.g. %s",
                 len(skipped), skipped[0])
    if not files:
        raise DataError(f"no image files in {', '.join(map(str, items))} "
                        f"(looked for {', '.join(IMG_EXTENSIONS)})")
    return list(dict.fromkeys(files))  # keep order, drop repeats
