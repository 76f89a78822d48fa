"""The LightningDataModule: ImageFolder tree -> split -> uint8 batches -> float batches."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from product_cnn.data.augment import build_augment, build_mix
from product_cnn.data.batches import CountedSplits, DeviceBatches
from product_cnn.data.cache import DecodedImageCache, default_cache_dir
from product_cnn.data.check import TreeCheck, check_report, check_tree
from product_cnn.data.dataset import ImageListDataset
from product_cnn.data.demo import default_demo_root, ensure_demo_dataset
from product_cnn.data.extra import Extra, read_extra
from product_cnn.data.folder import SPLITS, FolderTree, Sample, scan_tree
from product_cnn.data.folds import check_fold, kfold_split
from product_cnn.data.images import DECODE_METHODS, checkpoint_decode
from product_cnn.data.listing import is_listing, scan_listing
from product_cnn.data.relabel import Relabel, apply_relabel, read_relabel
from product_cnn.data.samplers import EpochShuffleSampler, EpochWeightedSampler
from product_cnn.data.split import stratified_split
from product_cnn.errors import CheckpointError, DataError

log = logging.getLogger(__name__)

BALANCES = ("none", "weighted_loss", "sampler")


class ProductDataModule(CountedSplits, DeviceBatches, L.LightningDataModule):
    """Product photos from ``root`` in either layout (see :mod:`product_cnn.data.folder`), or listed in
    a ``path,label`` CSV (``root=photos.csv``, see :mod:`product_cnn.data.listing`).

    Batches leave the loader as uint8; augmentation (training only) and scaling to float in
    [0, 1] happen after they reach the device. With ``demo=True`` the synthetic demo tree is
    generated at ``root`` if missing (``root=None``: ``<cache_dir>/demo-v4``).
    With ``cache=True`` every photo is decoded once into a :class:`DecodedImageCache` under
    ``cache_dir`` (None: ``$PRODUCT_CNN_CACHE`` or ``~/.cache/product-cnn``) and read from
    there afterwards.
    ``classes`` fixes the class list (a checkpoint's): class folders are matched to it by
    name, a folder may hold a subset, and an unknown folder is refused. ``test_all=True`` makes
    every photo of an unsplit folder the test split (testing a model on a shop's own photos).
    ``folds=K`` with ``fold=k`` makes fold k of a k-fold split the test split (see
    :mod:`product_cnn.data.folds`). ``relabel`` is a CSV of label corrections applied when the
    folder is scanned (see :mod:`product_cnn.data.relabel`); ``extra`` a CSV of more training
    photos from anywhere (see :mod:`product_cnn.data.extra`). ``mixup_alpha`` / ``cutmix_alpha``
    (0: off) mix training batches on the device (torchvision's MixUp / CutMix; one of the two,
    at random, when both are on): the labels become class probabilities.
    """

    def __init__(
        self,
        root: str | None = None,
        demo: bool = False,
        image_size: int = 256,
        batch_size: int = 32,
        val_fraction: float = 0.2,
        test_fraction: float = 0.1,
        split_seed: int = 42,
        shuffle_seed: int | None = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        demo_images_per_class: int = 100,
        demo_seed: int = 0,
        cache: bool = True,
        decode: str = "reduced",
        cache_dir: str | None = None,
        cache_memory_mb: int = 4096,
        check: bool = True,
        skip_bad_images: bool = False,
        group_duplicates: bool = True,
        balance: str = "none",
        augment: str = "none",
        classes: Sequence[str] | None = None,
        test_all: bool = False,
        folds: int | None = None,
        fold: int = 0,
        relabel: str | None = None,
        extra: str | None = None,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
    ) -> None:
        super().__init__()
        if root is None:
            if not demo:
                raise DataError("no data folder given: set data.root=/path/to/photos")
            root = default_demo_root(cache_dir or default_cache_dir())
        root = str(Path(root).expanduser().resolve())
        classes = list(classes) if classes is not None else None
        if balance not in BALANCES:
            raise DataError(f"data.balance={balance!r} is not one of {', '.join(BALANCES)}")
        if folds is not None:
            check_fold(folds, fold)
            if test_all:
                raise DataError("data.folds and data.test_all exclude each other: a fold is the test split")
        relabel = str(Path(relabel).expanduser().resolve()) if relabel else None
        extra = str(Path(extra).expanduser().resolve()) if extra else None
        if decode not in DECODE_METHODS:
            raise DataError(f"data.decode={decode!r} is not one of {', '.join(DECODE_METHODS)}")
        # built now so that an unknown name or value is refused before any data is read
        self.augment = build_augment(augment, image_size)
        build_mix(mixup_alpha, cutmix_alpha, num_classes=2)
        self.save_hyperparameters()
        self.check: TreeCheck | None = None
        self.tree: FolderTree | None = None
        self.split_samples: dict[str, list[Sample]] = {}
        self.cache: DecodedImageCache | None = None
        self.relabel: Relabel | None = None
        self.extra: Extra | None = None
        self.mix: Callable | None = None  # MixUp / CutMix, built once the class count is known

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping[str, Any], overrides: Mapping[str, Any] | None = None,
                        class_names: Sequence[str] | None = None) -> ProductDataModule:
        """The data set a checkpoint was trained on, with every non-None ``overrides`` field applied.

        A new ``root`` is a test set of its own: never a place to generate demo data into, and
        (unless ``overrides`` sets ``test_all=False``) every photo in it is tested.
        ``class_names`` (the checkpoint's) fix the class list (``classes``, see the class docstring).
        """
        saved = checkpoint.get("datamodule_hyper_parameters")
        overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
        if not saved and "root" not in overrides:
            raise CheckpointError("the checkpoint does not record its data set: "
                                  "pass data.root=/path/to/photos")
        params = dict(saved or {})
        if "input_dir" in params:  # trained from shards: only what a folder data set shares with them
            import inspect

            known = set(inspect.signature(cls.__init__).parameters)
            params = {k: v for k, v in params.items() if k in known and v is not None}
        if saved:
            params.setdefault("decode", checkpoint_decode(checkpoint))
        model_size = checkpoint.get("hyper_parameters", {}).get("image_size")
        if model_size is not None:  # photos are resized to what the network takes
            params["image_size"] = model_size
        if "root" in overrides:  # another folder: no demo, no folds, no corrections of the old one
            params.update(demo=False, test_all=True, folds=None, relabel=None, extra=None)
        params.update(overrides)
        if class_names is not None:
            params["classes"] = list(class_names)
        return cls(**params)

    @classmethod
    def for_evaluation(cls, checkpoint: Mapping[str, Any], data_cfg: Any,
                       class_names: Sequence[str]) -> ProductDataModule:
        """eval.py's data: a whole data config (``data=folder``, with a ``_target_``) built for the
        checkpoint's classes, or the checkpoint's own data set with ``data_cfg``'s fields applied."""
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        if data_cfg is not None and "_target_" in data_cfg:
            return instantiate(data_cfg, classes=list(class_names), _convert_="all")
        overrides = OmegaConf.to_container(data_cfg, resolve=True) if data_cfg is not None else None
        return cls.from_checkpoint(checkpoint, overrides, class_names)

    @property
    def class_names(self) -> list[str]:
        if self.tree is None:
            raise RuntimeError("call setup() before asking for class names")
        return self.tree.class_names

    @property
    def root(self) -> str:
        """The photo folder (per-photo reports name files relative to it)."""
        return self.hparams.root

    @property
    def cache_dir(self) -> str:
        """Where the decoded-image cache and the data-check results go."""
        return self.hparams.cache_dir or default_cache_dir()

    def prepare_data(self) -> None:
        if self.hparams.demo:
            ensure_demo_dataset(
                self.hparams.root, self.hparams.demo_images_per_class, self.hparams.demo_seed
            )

    def setup(self, stage: str | None = None) -> None:
        if self.tree is not None:
            return
        hp = self.hparams
        if hp.demo and not Path(hp.root).is_dir():
            self.prepare_data()  # setup() without prepare_data(), e.g. from a notebook
        tree = scan_listing(hp.root, hp.classes) if is_listing(hp.root) else scan_tree(hp.root, hp.classes)
        if hp.folds is not None and tree.presplit:
            raise DataError(f"data.folds needs one folder per class: {hp.root} is already split into "
                            "train/val/test (cross-validate the unsplit photos instead)")
        if hp.relabel:
            self.relabel = read_relabel(hp.relabel, hp.root, tree.class_names)
            apply_relabel(tree, self.relabel)
        groups: list[list[str]] = []
        if hp.check:
            self.check = check_tree(tree, self.cache_dir, hp.skip_bad_images)
            groups = self.check.groups if hp.group_duplicates else []
            self._log_duplicates(tree.presplit)
        self.tree, self.split_samples = tree, self._split(tree, groups)
        if hp.extra and not hp.test_all:
            known = {os.path.abspath(p) for samples in tree.splits.values() for p, _ in samples}
            self.extra = read_extra(hp.extra, tree.class_names, known)
            self.split_samples["train"] = sorted(self.split_samples.get("train", []) + self.extra.samples)
        self.mix = build_mix(hp.mixup_alpha, hp.cutmix_alpha, len(tree.class_names))
        splits = self.split_samples
        if hp.cache:
            paths = sorted({path for samples in splits.values() for path, _ in samples})
            self.cache = DecodedImageCache(paths, hp.image_size, self.cache_dir,
                                           memory_limit=hp.cache_memory_mb * 2**20, decode=hp.decode)
        if tree.ignored:
            log.warning("Ignored %d non-image file(s) in %s, e.g. %s",
                        len(tree.ignored), hp.root, tree.ignored[0])
        log.info("%s", self.describe())

    def _split(self, tree: FolderTree, groups: list[list[str]]) -> dict[str, list[Sample]]:
        hp = self.hparams
        if tree.presplit:
            splits = dict(tree.splits)
            missing = [s for s in ("val", "test") if s not in splits]
            if missing:  # carve the missing splits out of train, stratified
                fractions = {s: (hp.val_fraction if s == "val" else hp.test_fraction) for s in missing}
                carved = stratified_split(
                    splits["train"], tree.class_names, hp.root,
                    val_fraction=fractions.get("val", 0.0),
                    test_fraction=fractions.get("test", 0.0),
                    seed=hp.split_seed, groups=groups,
                )
                splits["train"] = carved["train"]
                splits.update({s: carved[s] for s in missing})
                log.info("No %s folder in %s: split it from train", "/".join(missing), hp.root)
            return splits
        if hp.test_all:
            return {"train": [], "val": [], "test": sorted(tree.splits["all"])}
        if hp.folds is not None:
            return kfold_split(tree.splits["all"], tree.class_names, hp.root, hp.folds, hp.fold,
                               hp.val_fraction, hp.split_seed, groups)
        return stratified_split(tree.splits["all"], tree.class_names, hp.root,
                                hp.val_fraction, hp.test_fraction, hp.split_seed, groups)

    def describe(self) -> str:
        """``Data: <root> (<how it was split>)`` and the per-class, per-split table."""
        hp = self.hparams
        if self.tree is not None and self.tree.presplit:
            how = "pre-split"
        elif hp.test_all:
            how = "every photo is tested"
        elif hp.folds is not None:
            how = (f"fold {hp.fold} of {hp.folds} folds (0..{hp.folds - 1}) is the test split, "
                   f"{hp.val_fraction:.0%} of the rest validates, seed {hp.split_seed}")
        else:
            how = (f"split {1 - hp.val_fraction - hp.test_fraction:.0%}/{hp.val_fraction:.0%}/"
                   f"{hp.test_fraction:.0%}, seed {hp.split_seed}")
        relabel = f"\n  {self.relabel.summary()}" if self.relabel is not None else ""
        extra = f"\n  {self.extra.summary()}" if self.extra is not None else ""
        return f"Data: {hp.root} ({how}){relabel}{extra}\n{self.summary()}"

    def check_report(self, show_groups: int) -> str:
        """check_data.py's report: :meth:`describe` and the photo check, after a quiet ``setup``."""
        level = log.level
        log.setLevel(logging.WARNING)  # its INFO lines (split table, groups) are all in the report
        try:
            self.setup("fit")
        finally:
            log.setLevel(level)
        return self.describe() + "\n" + check_report(self.check, self.tree, self.split_samples,
                                                      grouped=self.hparams.group_duplicates,
                                                      show_groups=show_groups)

    def _log_duplicates(self, presplit: bool) -> None:
        check = self.check
        if not check.groups:
            return
        photos = sum(len(g) for g in check.groups)
        if presplit:
            log.info("Near-duplicates: %d group(s) of %d photos", len(check.groups), photos)
            for where in check.leaks[:10]:
                log.warning("Near-duplicates in several splits (leakage): %s",
                            "; ".join(f"{s}: {', '.join(p)}" for s, p in sorted(where.items())))
        elif self.hparams.test_all:  # one split: nothing to keep apart
            log.info("Near-duplicates: %d group(s) of %d photos", len(check.groups), photos)
        else:
            kept = "each kept within one split" if self.hparams.group_duplicates else \
                "NOT kept together (data.group_duplicates=false)"
            log.info("Near-duplicates: %d group(s) of %d photos, %s", len(check.groups), photos, kept)

    def counts(self) -> dict[str, list[int]]:
        """Images per class for each split: ``{"train": [n_class0, ...], ...}``."""
        out = {}
        for split in SPLITS:
            per_class = [0] * len(self.class_names)
            for _, label in self.split_samples.get(split, []):
                per_class[label] += 1
            out[split] = per_class
        return out

    def dataset(self, split: str) -> ImageListDataset:
        """The dataset for ``split`` (one of train, val, test)."""
        if split not in self.split_samples:
            raise DataError(f"no {split} split in {self.hparams.root}")
        return ImageListDataset(self.split_samples[split], self.hparams.image_size, self.cache,
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
