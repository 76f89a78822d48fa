"""More training photos from a CSV: ``data.extra=review.csv`` (``path,label``), e.g. predict.py's
review file after a person corrected it. The photos may lie anywhere; they join the training
split only (never validation or test), with the label given. They are never moved or changed.

A relative path is read from the CSV's own folder. A row whose label is empty or ``exclude`` is
skipped (a photo the person decided not to use).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from product_cnn.data.images import is_image_file, open_image
from product_cnn.data.relabel import EXCLUDE, read_path_label_csv
from product_cnn.errors import DataError, ImageLoadError

Sample = tuple[str, int]


@dataclass
class Extra:
    """What an extra file added."""

    file: str
    samples: list[Sample] = field(default_factory=list)  # (absolute path, label index)
    skipped: int = 0  # rows labelled exclude or left empty

    def summary(self) -> str:
        return f"extra {self.file}: {len(self.samples)} photo(s) added to training, {self.skipped} skipped"


def read_extra(file: str | Path, class_names: list[str], known: set[str]) -> Extra:
    """Parse and check ``file`` (every photo opened once); raise :class:`DataError` naming the
    first bad row. ``known``: absolute paths of the photos already in the data set (refused: use
    ``data.relabel`` to change their label)."""
    file = Path(file).expanduser()
    where = f"data.extra={file}"
    rows = read_path_label_csv(file, "data.extra")
    extra = Extra(str(file))
    seen: dict[str, str] = {}
    for number, row in enumerate(rows, start=2):  # the header is line 1
        path, label = (row["path"] or "").strip(), (row["label"] or "").strip()
        line = f"{where}, line {number}"
        if label in ("", EXCLUDE):
            extra.skipped += 1
            continue
        if label not in class_names:
            raise DataError(f"{line}: label {label!r} is not a class ({', '.join(class_names)}) or {EXCLUDE}")
        full = os.path.abspath(path if os.path.isabs(path) else os.path.join(file.parent, path))
        if not path or not os.path.isfile(full):
            raise DataError(f"{line}: {path or '(empty path)'} is not a file")
        if not is_image_file(full):
            raise DataError(f"{line}: {path} is not an image file (by its extension)")
        if full in known:
            raise DataError(f"{line}: {path} is already one of the data set's photos: "
                            "change its label with data.relabel instead")
        if full in seen:
            if seen[full] != label:
                raise DataError(f"{line}: {path} is listed twice with different labels")
            continue
        try:
            with open_image(full):
                pass
        except ImageLoadError as err:
            raise DataError(f"{line}: {err}") from None
        seen[full] = label
        extra.samples.append((full, class_names.index(label)))
    return extra
