"""``prepare_data.py``: a photo tree (or its relabel / extra CSVs) -> litdata shards, with litdata's
``optimize`` in parallel workers.

The photos, labels, split and near-duplicate groups are those :class:`ProductDataModule` computes for
the same ``data.*`` options, so that ``data=streaming`` trains on exactly what ``data=folder`` would;
photos the data check cannot read are listed and left out. Each split is one litdata dataset; an
interrupted run, run again, keeps the finished splits and resumes the unfinished one from litdata's
checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from product_cnn.data.catalogue import PhotoCatalogue
from product_cnn.data.images import load_array
from product_cnn.data.split import relkey
from product_cnn.data.streaming.location import exists, is_remote, join, read_text, resolve, write_text
from product_cnn.data.streaming.manifest import (
    INTENT,
    MANIFEST,
    STORES,
    Manifest,
    write_samples,
)
from product_cnn.errors import DataError

log = logging.getLogger(__name__)


class ShardItem:
    """litdata's ``fn``: ``(index, path, label)`` -> the stored item (picklable for its workers)."""

    def __init__(self, store: str, image_size: int, decode: str) -> None:
        self.store, self.image_size, self.decode = store, image_size, decode

    def __call__(self, item: tuple[int, str, int]) -> dict[str, Any]:
        index, path, label = item
        if self.store == "bytes":
            image: Any = np.frombuffer(Path(path).read_bytes(), dtype=np.uint8)
        else:
            image = load_array(path, self.image_size, decode=self.decode)
        return {"image": image, "label": label, "index": index}


def _fingerprint(store: str, photos: PhotoCatalogue, image_size: int, decode: str, folds: int | None) -> str:
    rows = sorted((split, relkey(p, photos.root), label) for split, samples in photos.split_samples.items()
                  for p, label in samples)
    text = json.dumps([store, image_size, decode, photos.class_names, folds, rows])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def prepare_shards(photos: PhotoCatalogue, output: str, *, image_size: int, decode: str, store: str = "image",
                   folds: int | None = 5, num_workers: int | None = None, chunk_bytes: str = "64MB",
                   storage_options: dict[str, Any] | None = None) -> Manifest:
    """Write the shards of the catalogue's photos, decoded (``decode``) at ``image_size``, to ``output``
    (a folder or ``s3://...``); return the manifest. Already complete (same photos and options):
    nothing is redone."""
    from litdata import optimize

    if store not in STORES:
        raise DataError(f"store={store!r} is not one of {', '.join(STORES)}")
    output = resolve(output)
    if not is_remote(output) and os.path.isfile(output):
        raise DataError(f"output={output} is a file: give a folder (or s3://bucket/prefix) for the shards")
    photos.load()
    log.info("%s", photos.describe())
    if photos.extra is not None:
        log.info("data.extra: %d more training photo(s) go into the train shards", len(photos.extra.samples))
    if folds is not None and folds < 2:
        raise DataError(f"folds={folds}: a k-fold assignment needs at least 2 folds (or folds=null)")
    fold_of = photos.fold_of(folds)
    fingerprint = _fingerprint(store, photos, image_size, decode, folds if fold_of else None)
    intent_path = join(output, INTENT)
    if exists(join(output, MANIFEST), storage_options):
        done = Manifest.from_json(read_text(join(output, MANIFEST), storage_options), output)
        if done.fingerprint == fingerprint:
            log.info("Shards in %s are complete and match these photos and options: nothing to do", output)
            return done
        raise DataError(f"{output} already holds other shards (other photos or options): "
                        "choose a new output folder")
    if exists(intent_path, storage_options):
        intent = json.loads(read_text(intent_path, storage_options))
        if intent.get("fingerprint") != fingerprint:
            raise DataError(f"{output} holds an unfinished run of other photos or options: "
                            "choose a new output folder, or delete it")
        log.info("Resuming the unfinished run in %s", output)
    elif not is_remote(output) and os.path.isdir(output) and os.listdir(output):
        raise DataError(f"output={output} is not empty and holds no shards of ours: choose a new folder")
    write_text(intent_path, json.dumps({"fingerprint": fingerprint}), storage_options)

    workers = num_workers or os.cpu_count() or 1
    item = ShardItem(store, image_size, decode)
    names = photos.class_names
    for split in ("train", "val", "test"):
        samples = photos.split_samples.get(split) or []
        if not samples:
            continue
        where = join(output, split)
        rows = [(p, names[label], fold_of.get(p)) for p, label in samples]
        if exists(join(where, "index.json"), storage_options):  # litdata writes it last
            if not exists(join(output, f"{split}.csv"), storage_options):
                write_samples(output, split, rows, storage_options)
            log.info("%s: already written, kept", split)
            continue
        start = time.perf_counter()
        inputs = [(i, p, label) for i, (p, label) in enumerate(samples)]
        # written in a seeded random order: a chunk (and so a batch) mixes classes; index = csv row
        random.Random(f"{photos.split_seed}:{split}").shuffle(inputs)
        optimize(fn=item, inputs=inputs, output_dir=where,
                 num_workers=min(workers, len(samples)), chunk_bytes=chunk_bytes, use_checkpoint=True,
                 reorder_files=False, storage_options=storage_options or {}, verbose=False,
                 start_method="fork")
        seconds = time.perf_counter() - start
        write_samples(output, split, rows, storage_options)
        log.info("%s: %d photos in %.1f s (%.0f photos/s, %d workers)", split, len(samples), seconds,
                 len(samples) / seconds, min(workers, len(samples)))
    bad = [[b.path, str(b.error)] for b in (photos.check.bad if photos.check is not None else [])]
    manifest = Manifest(class_names=names, store=store, image_size=image_size, decode=decode,
                        root=photos.root, how=photos.describe().splitlines()[0], counts=photos.counts(),
                        folds=folds if fold_of else None, fingerprint=fingerprint, bad=bad,
                        near_duplicate_groups=len(photos.check.all_groups) if photos.check is not None else 0)
    write_text(join(output, MANIFEST), manifest.to_json(), storage_options)
    for path, reason in bad:
        log.warning("Left out (unreadable): %s: %s", path, reason)
    log.info("Shards ready in %s: %s. Train from them with: python train.py data=streaming "
             "data.input_dir=%s", output, ", ".join(f"{s} {sum(c)}" for s, c in manifest.counts.items()
                                                     if sum(c)), output)
    return manifest
