"""The folder data module: a :class:`~product_cnn.data.catalogue.PhotoCatalogue` -> decoded-image
cache -> uint8 batches -> float batches on the training device."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from product_cnn.data.augment import build_augment, build_mix
from product_cnn.data.batches import CountedSplits, DeviceBatches
from product_cnn.data.cache import DecodedImageCache, default_cache_dir
from product_cnn.data.catalogue import PhotoCatalogue
from product_cnn.data.dataset import ImageListDataset
from product_cnn.data.folder import Sample
from product_cnn.data.images import DECODE_METHODS
from product_cnn.data.samplers import EpochShuffleSampler, EpochWeightedSampler
from product_cnn.errors import DataError

log = logging.getLogger(__name__)

BALANCES = ("none", "weighted_loss", "sampler")


class ProductDataModule(CountedSplits, DeviceBatches, L.LightningDataModule):
    """Product photos from ``root``: a folder in either layout or a ``path,label`` CSV.

    Which photos, their labels and split come from a :class:`PhotoCatalogue` made of ``root`` and
    ``photo_options`` (``classes``, ``val_fraction``, ``test_fraction``, ``split_seed``, ``check``,
    ``skip_bad_images``, ``group_duplicates``, ``test_all``, ``folds``, ``fold``, ``relabel``,
    ``extra``: see :mod:`product_cnn.data.catalogue`); this module makes batches of it.

    Batches leave the loader as uint8; augmentation (training only) and scaling to float in
    [0, 1] happen after they reach the device. With ``cache=True`` every photo is decoded once
    into a :class:`DecodedImageCache` under ``cache_dir`` (None: ``$PRODUCT_CNN_CACHE`` or
    ``~/.cache/product-cnn``) and read from there afterwards. ``mixup_alpha`` / ``cutmix_alpha``
    (0: off) mix training batches on the device (torchvision's MixUp / CutMix; one of the two,
    at random, when both are on): the labels become class probabilities.
    """

    def __init__(
        self,
        root: str,
        *,
        image_size: int = 256,
        batch_size: int = 32,
        shuffle_seed: int | None = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        cache: bool = True,
        decode: str = "reduced",
        cache_dir: str | None = None,
        cache_memory_mb: int = 4096,
        balance: str = "none",
        augment: str = "none",
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        **photo_options: Any,
    ) -> None:
        super().__init__()
        unknown = sorted(set(photo_options) - set(PhotoCatalogue.OPTIONS))
        if unknown:
            raise DataError(f"data=folder has no option {', '.join(f'data.{k}' for k in unknown)}")
        self.photos = PhotoCatalogue(root, cache_dir=cache_dir, **photo_options)
        if balance not in BALANCES:
            raise DataError(f"data.balance={balance!r} is not one of {', '.join(BALANCES)}")
        if decode not in DECODE_METHODS:
            raise DataError(f"data.decode={decode!r} is not one of {', '.join(DECODE_METHODS)}")
        # built now so that an unknown name or value is refused before any data is read
        self.augment = build_augment(augment, image_size)
        build_mix(mixup_alpha, cutmix_alpha, num_classes=2)
        # flat, plain values (checkpoints record them and load weights_only): the photos' options too
        self.save_hyperparameters({
            **self.photos.options(), "image_size": image_size, "batch_size": batch_size,
            "shuffle_seed": shuffle_seed, "num_workers": num_workers, "pin_memory": pin_memory,
            "cache": cache, "decode": decode, "cache_dir": cache_dir, "cache_memory_mb": cache_memory_mb,
            "balance": balance, "augment": augment, "mixup_alpha": mixup_alpha,
            "cutmix_alpha": cutmix_alpha})
        self.cache: DecodedImageCache | None = None
        self.mix: Callable | None = None  # MixUp / CutMix, built once the class count is known
        self._ready = False

    @property
    def split_samples(self) -> dict[str, list[Sample]]:
        return self.photos.split_samples

    @property
    def class_names(self) -> list[str]:
        return self.photos.class_names  # after setup()

    def peek_class_names(self) -> list[str]:
        """The class names, from a scan of ``root`` alone (no check, no split, no cache)."""
        return self.photos.peek_class_names()

    @property
    def root(self) -> str:
        """The photo folder (per-photo reports name files relative to it)."""
        return self.photos.root

    @property
    def cache_dir(self) -> str:
        """Where the decoded-image cache and the data-check results go."""
        return self.hparams.cache_dir or default_cache_dir()

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        hp = self.hparams
        self.photos.load()
        self.mix = build_mix(hp.mixup_alpha, hp.cutmix_alpha, len(self.class_names))
        if hp.cache:
            self.cache = DecodedImageCache(self.photos.paths, hp.image_size, cache_dir=self.cache_dir,
                                           memory_limit=hp.cache_memory_mb * 2**20, decode=hp.decode)
        self._ready = True
        log.info("%s", self.describe())

    def describe(self) -> str:
        """``Data: <root> (<how it was split>)`` and the per-class, per-split table."""
        return self.photos.describe()

    def counts(self) -> dict[str, list[int]]:
        """Images per class for each split: ``{"train": [n_class0, ...], ...}``."""
        return self.photos.counts()

    def dataset(self, split: str) -> ImageListDataset:
        """The dataset for ``split`` (one of train, val, test)."""
        if split not in self.split_samples:
            raise DataError(f"no {split} split in {self.hparams.root}")
        return ImageListDataset(self.split_samples[split], self.hparams.image_size, cache=self.cache,
                                with_index=split == "test", decode=self.hparams.decode)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.dataset(split)
        hp = self.hparams
        # A last training batch of one sample would break BatchNorm1d; drop only that case.
        drop_last = shuffle and len(dataset) % hp.batch_size == 1
        sampler = None
        if shuffle:  # an order that depends on (seed, epoch) only: resumed runs repeat it
            seed = hp.shuffle_seed if hp.shuffle_seed is not None else int(torch.randint(2**31 - 1, ()))
            if hp.balance == "sampler":  # every class equally likely per draw
                weights = self.class_weights()
                sampler = EpochWeightedSampler([float(weights[label]) for _, label in dataset.samples],
                                               seed=seed)
            else:
                sampler = EpochShuffleSampler(len(dataset), seed)
        elif dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # Evaluate every image exactly once: Lightning's default DistributedSampler pads the
            # last batches with repeated images so that every process gets the same count.
            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
        return DataLoader(
            dataset,
            batch_size=hp.batch_size,
            sampler=sampler,
            # workers' base seed from here, not from the global generator (see data/samplers.py)
            generator=torch.Generator().manual_seed(hp.shuffle_seed or 0),
            drop_last=drop_last,
            num_workers=hp.num_workers,
            pin_memory=hp.pin_memory,
            persistent_workers=hp.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def state_dict(self) -> dict[str, Any]:
        """Saved with every checkpoint: the label corrections and extra photos this run used, if any."""
        return self.photos.state_dict()
