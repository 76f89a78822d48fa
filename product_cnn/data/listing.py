"""A data set given as a CSV of ``path,label`` rows instead of a folder tree: ``data.root=photos.csv``.

A relative path is read from the CSV's own folder; the class names are the sorted labels (or a
checkpoint's). The photos are split like an unsplit folder's (by their paths relative to the CSV).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from product_cnn.data.folder import FolderTree
from product_cnn.data.images import is_image_file
from product_cnn.data.relabel import read_path_label_csv
from product_cnn.errors import DataError


def is_listing(root: str | Path) -> bool:
    """True when ``data.root`` names a CSV file rather than a folder."""
    return str(root).lower().endswith(".csv") and os.path.isfile(root)


def scan_listing(file: str | Path, class_names: Sequence[str] | None = None) -> FolderTree:
    """The photos a ``path,label`` CSV lists, as an unsplit :class:`FolderTree`; one line names the
    first bad row (a missing file, a non-image, an empty or unknown label, a conflicting repeat)."""
    file = Path(file).expanduser().resolve()
    rows = read_path_label_csv(file, "data.root")
    seen: dict[str, str] = {}
    for number, row in enumerate(rows, start=2):  # the header is line 1
        path, label = (row["path"] or "").strip(), (row["label"] or "").strip()
        line = f"data.root={file}, line {number}"
        full = os.path.abspath(path if os.path.isabs(path) else os.path.join(file.parent, path))
        if not path or not os.path.isfile(full):
            raise DataError(f"{line}: {path or '(empty path)'} is not a file")
        if not is_image_file(full):
            raise DataError(f"{line}: {path} is not an image file (by its extension)")
        if not label:
            raise DataError(f"{line}: {path} has no label")
        if class_names is not None and label not in class_names:
            raise DataError(f"{line}: label {label!r} is not one of the classes ({', '.join(class_names)})")
        if seen.get(full, label) != label:
            raise DataError(f"{line}: {path} is listed twice with different labels")
        seen[full] = label
    if not seen:
        raise DataError(f"data.root={file} lists no photos (columns path,label)")
    names = list(class_names) if class_names is not None else sorted(set(seen.values()))
    samples = sorted((path, names.index(label)) for path, label in seen.items())
    return FolderTree(str(file), names, {"all": samples})
