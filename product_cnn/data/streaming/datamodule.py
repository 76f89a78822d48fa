"""``data=streaming``: train, validate and test from the shards ``prepare_data.py`` wrote."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import lightning as L

from product_cnn.data.augment import build_augment, build_mix
from product_cnn.data.batches import CountedSplits, DeviceBatches
from product_cnn.data.cache import default_cache_dir
from product_cnn.data.folder import SPLITS, Sample
from product_cnn.data.images import check_decode
from product_cnn.data.streaming.dataset import ShardDataset
from product_cnn.data.streaming.loader import ResumableLoader
from product_cnn.data.streaming.location import is_remote, join, resolve
from product_cnn.data.streaming.manifest import Manifest, read_manifest, read_samples
from product_cnn.errors import DataError

log = logging.getLogger(__name__)

BALANCES = ("none", "weighted_loss")
# data=folder's options that the shards fixed when they were made (presets such as
# experiment=finetune set some): accepted and ignored, with a line in the log
FIXED_BY_THE_SHARDS = {"root", "demo", "val_fraction", "test_fraction", "split_seed", "folds", "fold",
                       "relabel", "extra", "cache", "cache_memory_mb", "check", "skip_bad_images",
                       "group_duplicates", "same_photo", "test_all", "demo_images_per_class", "demo_seed"}


class StreamingDataModule(CountedSplits, DeviceBatches, L.LightningDataModule):
    """The shards at ``input_dir`` (a folder or ``s3://bucket/prefix``), streamed by litdata.

    Every rank (and loader worker) reads its own part of each split; the training split is shuffled
    per epoch from ``shuffle_seed``. Shards in object storage are cached under
    ``<cache_dir>/streaming`` up to ``max_cache_size`` (e.g. "50GB"), oldest chunks evicted first.
    The training loader's position is saved in every checkpoint (Lightning's stateful loaders), so a
    run resumed from a mid-epoch checkpoint (``checkpoint_every_n_steps``) continues with the samples
    the uninterrupted run would have seen. Augmentation, MixUp / CutMix and ``balance=weighted_loss``
    work as in ``data=folder``; ``classes`` (a checkpoint's) must match the shards' classes.
    ``image_size`` None (the default): the size the shards were made at; another size resizes
    ``store=bytes`` shards when read and is refused for ``store=image`` shards.
    """

    def __init__(
        self,
        input_dir: str,
        *, image_size: int | None = None,
        batch_size: int = 32,
        shuffle_seed: int | None = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        decode: str | None = None,
        cache_dir: str | None = None,
        max_cache_size: str = "50GB",
        storage_options: dict[str, Any] | None = None,
        balance: str = "none",
        augment: str = "none",
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        checkpoint_every_n_steps: int | None = None,
        classes: Sequence[str] | None = None,
        **folder_options: Any,
    ) -> None:
        super().__init__()
        unknown = sorted(set(folder_options) - FIXED_BY_THE_SHARDS)
        if unknown:
            raise DataError(f"data=streaming has no option {', '.join(f'data.{k}' for k in unknown)}")
        if folder_options:
            log.info("The shards fixed the photos and their split when they were made: %s ignored "
                     "(make shards with them: prepare_data.py)",
                     ", ".join(f"data.{k}" for k in sorted(folder_options)))
        if not input_dir:
            raise DataError("no shards given: set data.input_dir=<folder or s3://bucket/prefix> "
                            "(make them with python prepare_data.py)")
        input_dir = resolve(str(input_dir))
        if balance not in BALANCES:
            extra = " (balanced draws need the whole index: data=folder data.balance=sampler)" \
                if balance == "sampler" else ""
            raise DataError(f"data.balance={balance!r} is not one of {', '.join(BALANCES)} with "
                            f"data=streaming{extra}")
        if decode is not None:
            check_decode(decode)
        if checkpoint_every_n_steps is not None and checkpoint_every_n_steps < 1:
            raise DataError(f"data.checkpoint_every_n_steps={checkpoint_every_n_steps}: give a number of "
                            "steps >= 1, or null for end-of-epoch checkpoints only")
        made = None
        if image_size is None:  # the shards' size, recorded as used: the model is built at it
            made = read_manifest(input_dir, storage_options)
            image_size = made.image_size
            log.info("Image size: %d px, as the shards were made%s", image_size,
                     " (data.image_size=<px> resizes them)" if made.store == "bytes" else "")
        self.augment = build_augment(augment, image_size)
        build_mix(mixup_alpha, cutmix_alpha, num_classes=2)
        classes = list(classes) if classes is not None else None
        self.save_hyperparameters(ignore=list(folder_options))
        self.manifest: Manifest | None = None
        self._made = made  # the manifest, when read already
        self.split_samples: dict[str, list[Sample]] = {}
        self._loaders: dict[str, ResumableLoader] = {}

    # what the rest of the project reads from a data module
    @property
    def class_names(self) -> list[str]:
        if self.manifest is None:
            raise RuntimeError("call setup() before asking for class names")
        return self.manifest.class_names

    @property
    def cache_dir(self) -> str:
        return self.hparams.cache_dir or default_cache_dir()

    @property
    def root(self) -> str:
        """The photo folder the shards were made from (per-photo reports name files under it)."""
        return self.manifest.root if self.manifest is not None else self.hparams.input_dir

    def setup(self, stage: str | None = None) -> None:
        if self.manifest is not None:
            return
        hp = self.hparams
        manifest = self._made or read_manifest(hp.input_dir, hp.storage_options)
        if manifest.store == "image" and manifest.image_size != hp.image_size:
            side = manifest.image_size
            raise DataError(f"the shards in {hp.input_dir} hold {side}x{side} images, data.image_size="
                            f"{hp.image_size}: data.image_size=null takes the shards' size; or prepare "
                            f"shards at {hp.image_size} px (or with store=bytes)")
        if hp.classes is not None and list(hp.classes) != manifest.class_names:
            raise DataError(f"the shards in {hp.input_dir} hold classes {', '.join(manifest.class_names)}, "
                            f"the model has {', '.join(hp.classes)}")
        self.manifest = manifest
        if hp.decode is None:  # recorded as used: checkpoints tell predict.py how to decode
            self.hparams["decode"] = manifest.decode
        self.mix = build_mix(hp.mixup_alpha, hp.cutmix_alpha, len(manifest.class_names))
        for split in ("val", "test"):  # small enough to list; the training split is only counted
            if split in manifest.splits:
                self.split_samples[split] = read_samples(hp.input_dir, split, manifest.class_names,
                                                         hp.storage_options)
        log.info("%s", self.describe())

    def describe(self) -> str:
        m = self.manifest
        left_out = f", {len(m.bad)} unreadable photo(s) left out" if m.bad else ""
        made_from = m.how.removeprefix("Data: ")
        return (f"Data: shards {self.hparams.input_dir} ({m.store} items, made from {made_from}"
                f"{left_out})\n{self.summary()}")

    def model_args(self) -> dict[str, Any]:
        """As :meth:`DeviceBatches.model_args`, and the image size the shards give."""
        return {**super().model_args(), "image_size": self.hparams.image_size}

    def counts(self) -> dict[str, list[int]]:
        zeros = [0] * len(self.class_names)
        return {split: list(self.manifest.counts.get(split, zeros)) for split in SPLITS}

    def dataset(self, split: str, shuffle: bool = False) -> ShardDataset:
        """The streaming dataset of ``split``; ``shuffle``: a new order every epoch (training)."""
        if self.manifest is None:
            self.setup()
        hp = self.hparams
        if split not in self.manifest.splits:
            raise DataError(f"no {split} split in the shards at {hp.input_dir}")
        local_cache = None
        if is_remote(hp.input_dir):
            local_cache = os.path.join(self.cache_dir, "streaming", split)
        return ShardDataset(
            join(hp.input_dir, split), self.manifest.store, image_size=hp.image_size,
            decode=hp.decode or self.manifest.decode,
            with_index=split == "test", shuffle=shuffle, seed=hp.shuffle_seed or 0,
            # training: every rank the same number of batches; evaluation: every photo exactly once
            drop_last=shuffle, cache_dir=local_cache, max_cache_size=hp.max_cache_size,
            storage_options=hp.storage_options or {},
        )

    def peek_class_names(self) -> list[str]:
        """The class names of the shards' manifest."""
        self.setup("fit")
        return self.class_names

    def _loader(self, split: str, shuffle: bool) -> ResumableLoader:
        hp = self.hparams
        if split not in self._loaders:  # the same loader every epoch: its state is the position
            dataset = self.dataset(split, shuffle)
            # Training under DDP: litdata's drop_last gives every rank the same number of full
            # batches. One process: drop only a last batch of one sample (it breaks BatchNorm1d).
            drop_last = shuffle and (dataset.distributed_env.world_size > 1
                                     or len(dataset) % hp.batch_size == 1)
            self._loaders[split] = ResumableLoader(
                dataset, batch_size=hp.batch_size, num_workers=hp.num_workers, pin_memory=hp.pin_memory,
                persistent_workers=hp.num_workers > 0, drop_last=drop_last)
        return self._loaders[split]

    def train_dataloader(self) -> ResumableLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> ResumableLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> ResumableLoader:
        return self._loader("test", shuffle=False)
