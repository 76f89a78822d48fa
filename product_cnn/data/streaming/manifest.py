"""What a shard folder holds besides the shards: ``product_cnn.json`` (classes, how photos were
stored and split, counts, the photos left out) and one ``<split>.csv`` per split (``index,path,label,fold``:
row ``index`` is the shard item with that index, so that per-photo reports name the file).

Layout of ``output`` (a folder or an ``s3://`` prefix)::

    product_cnn.json        written last: its presence means every split is complete
    prepare.json            the fingerprint of what is being written (an interrupted run resumes)
    train/ val/ test/       one litdata dataset each (index.json + chunk-*.bin)
    train.csv val.csv test.csv
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from product_cnn.data.folder import SPLITS
from product_cnn.data.streaming.location import exists, join, read_text, write_text
from product_cnn.errors import DataError

MANIFEST = "product_cnn.json"
INTENT = "prepare.json"
FORMAT = "product-cnn-shards/1"
STORES = ("image", "bytes")  # the resized uint8 image, or the photo file's own bytes


@dataclass
class Manifest:
    """``product_cnn.json``: everything training needs to know about the shards without reading them."""

    class_names: list[str]
    store: str
    image_size: int
    decode: str
    root: str  # the photo folder the shards were made from
    how: str  # how it was split, as data=folder describes it
    counts: dict[str, list[int]]  # photos per class for each split present
    folds: int | None = None  # the k-fold assignment stored in <split>.csv (column fold)
    fingerprint: str = ""
    bad: list[list[str]] = field(default_factory=list)  # [path, reason] of photos left out
    near_duplicate_groups: int = 0
    format: str = FORMAT

    @property
    def splits(self) -> list[str]:
        return [s for s in SPLITS if sum(self.counts.get(s, [])) > 0]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{where} is not valid JSON ({err}): prepare the shards again") from None
        if data.get("format") != FORMAT:
            raise DataError(f"{where} is not a product-cnn shard manifest ({FORMAT}): "
                            "make shards with python prepare_data.py data.root=<photos> output=<dir>")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def read_manifest(location: str, storage_options: dict[str, Any] | None = None) -> Manifest:
    """The manifest of the shards at ``location``, or a one-line error saying how to make them."""
    path = join(location, MANIFEST)
    if not exists(path, storage_options):
        raise DataError(f"{location} holds no finished shards ({MANIFEST} missing): "
                        f"python prepare_data.py data.root=<photos> output={location}")
    return Manifest.from_json(read_text(path, storage_options), path)


def samples_csv(rows: list[tuple[str, str, int | None]]) -> str:
    """``index,path,label,fold`` for ``(path, label name, fold)`` rows in index order."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["index", "path", "label", "fold"])
    for i, (path, label, fold) in enumerate(rows):
        writer.writerow([i, path, label, "" if fold is None else fold])
    return out.getvalue()


def read_samples(location: str, split: str, class_names: list[str],
                 storage_options: dict[str, Any] | None = None) -> list[tuple[str, int]]:
    """``(path, label)`` of ``split`` in index order (the order of its shard items' ``index``)."""
    text = read_text(join(location, f"{split}.csv"), storage_options)
    position = {name: i for i, name in enumerate(class_names)}
    rows = list(csv.DictReader(io.StringIO(text)))
    return [(row["path"], position[row["label"]]) for row in rows]


def write_samples(location: str, split: str, rows: list[tuple[str, str, int | None]],
                  storage_options: dict[str, Any] | None = None) -> None:
    write_text(join(location, f"{split}.csv"), samples_csv(rows), storage_options)
