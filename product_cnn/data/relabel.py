"""Label corrections applied when a folder is scanned: ``data.relabel=<csv>``; photos untouched.

The CSV has the columns ``path`` (relative to the data root, or absolute) and ``label`` (a
class name, or ``exclude`` to leave the photo out). It changes only which label a photo
carries in this run; the files are never moved, renamed or rewritten.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from product_cnn.data.folder import FolderTree
from product_cnn.errors import DataError

EXCLUDE = "exclude"


@dataclass
class Relabel:
    """What a relabel file asked for and what applying it did."""

    file: str
    labels: dict[str, str]  # path relative to the data root -> class name or "exclude"
    relabelled: int = 0  # photos whose label changed
    excluded: int = 0

    def summary(self) -> str:
        return f"relabel {self.file}: relabelled {self.relabelled}, excluded {self.excluded}"


def read_path_label_csv(file: Path, option: str) -> list[dict[str, str]]:
    """The rows of a CSV with (at least) the columns ``path,label``; one-line errors naming ``option``."""
    try:
        with open(file, newline="") as handle:
            rows = list(csv.DictReader(handle))
            columns = rows[0].keys() if rows else []
    except FileNotFoundError:
        raise DataError(f"{option}={file}: no such file") from None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{option}={file} cannot be read: {err}") from None
    if not {"path", "label"} <= set(columns):
        found = ", ".join(columns) or "none"
        raise DataError(f"{option}={file} needs the columns path,label (found {found})")
    return rows


def read_relabel(file: str | Path, root: str, class_names: list[str]) -> Relabel:
    """Parse and check ``file``; raise :class:`DataError` naming the first bad row."""
    file = Path(file).expanduser()
    rows = read_path_label_csv(file, "data.relabel")
    labels: dict[str, str] = {}
    allowed = [*class_names, EXCLUDE]
    for number, row in enumerate(rows, start=2):  # the header is line 1
        path, label = (row["path"] or "").strip(), (row["label"] or "").strip()
        where = f"data.relabel={file}, line {number}"
        if label not in allowed:
            raise DataError(f"{where}: label {label!r} is not a class ({', '.join(class_names)}) "
                            f"or {EXCLUDE}")
        full = path if os.path.isabs(path) else os.path.join(root, path)
        if not path or not os.path.isfile(full):
            raise DataError(f"{where}: {path or '(empty path)'} is not a file under {root}")
        rel = _relative(os.path.abspath(full), root)
        if rel in labels and labels[rel] != label:
            raise DataError(f"{where}: {rel} is listed twice with different labels")
        labels[rel] = label
    return Relabel(str(file), labels)


def apply_relabel(tree: FolderTree, relabel: Relabel) -> None:
    """Give ``tree``'s samples their corrected labels or drop them, in place; count both."""
    root = tree.root
    found = {_relative(p, root) for samples in tree.splits.values() for p, _ in samples}
    missing = sorted(set(relabel.labels) - found)
    if missing:
        raise DataError(f"data.relabel={relabel.file}: {missing[0]} is not one of the photos found in {root}"
                        + (f" ({len(missing) - 1} more)" if len(missing) > 1 else ""))
    names = tree.class_names
    relabel.relabelled = relabel.excluded = 0
    new_splits = {}
    for split, samples in tree.splits.items():
        kept = []
        for path, label in samples:
            wanted = relabel.labels.get(_relative(path, root))
            if wanted == EXCLUDE:
                relabel.excluded += 1
                continue
            if wanted is not None and wanted != names[label]:
                relabel.relabelled += 1
                label = names.index(wanted)
            kept.append((path, label))
        new_splits[split] = sorted(kept)
    empty = [name for label, name in enumerate(names)
             if not any(lbl == label for samples in new_splits.values() for _, lbl in samples)]
    if empty:
        raise DataError(f"data.relabel={relabel.file} leaves no photos in class(es) {', '.join(empty)}")
    tree.splits = new_splits


def _relative(path: str, root: str) -> str:
    return os.path.relpath(os.path.normpath(path), root).replace(os.sep, "/")
