"""The photos to evaluate a checkpoint on: the data set it records (a folder's test split, or its
shards' test split), or another folder (``data.root=``, tested whole), or a whole data config."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L

from product_cnn.data.datamodule import ProductDataModule
from product_cnn.errors import CheckpointError


def open_test_data(saved: Mapping[str, Any], *, image_size: Any, decode: str, class_names: Sequence[str],
                   data_cfg: Any = None) -> L.LightningDataModule:
    """A data module, prepared and set up, whose test split evaluates the checkpoint (see
    :func:`data_for_checkpoint`)."""
    datamodule = data_for_checkpoint(saved, image_size=image_size, decode=decode, class_names=class_names,
                                     data_cfg=data_cfg)
    datamodule.prepare_data()
    datamodule.setup("test")
    return datamodule


def data_for_checkpoint(saved: Mapping[str, Any], *, image_size: Any, decode: str,
                        class_names: Sequence[str], data_cfg: Any = None) -> L.LightningDataModule:
    """A data module (not yet set up) whose test split evaluates the checkpoint.

    ``saved`` is the checkpoint's data options (empty when it records none), ``image_size`` the
    network's and ``decode`` how the checkpoint's photos were decoded; ``class_names`` (the
    checkpoint's) fix the class list. ``data_cfg`` (eval.py's ``data``) overrides fields, sets another
    ``root``, or is a whole data config with a ``_target_``.
    """
    from omegaconf import OmegaConf

    if data_cfg is not None and "_target_" in data_cfg:  # data=folder data.root=...: built as given
        from hydra.utils import instantiate

        # shards whose size is left unset: the model's (store=bytes resized, store=image refused if other)
        size = {"image_size": image_size} if data_cfg.get("image_size", 0) is None else {}
        return instantiate(data_cfg, classes=list(class_names), _convert_="all", **size)
    overrides = OmegaConf.to_container(data_cfg, resolve=True) if data_cfg is not None else {}
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if "input_dir" in saved and "root" not in overrides:  # trained from shards: their test split
        from product_cnn.data.streaming.datamodule import StreamingDataModule

        return _build(StreamingDataModule, {**saved, **overrides}, class_names)
    if not saved and "root" not in overrides:
        raise CheckpointError("the checkpoint does not record its data set: pass data.root=/path/to/photos")
    params = {**saved, "decode": saved.get("decode", decode), "image_size": image_size}
    if "root" in overrides:  # another folder: no demo, no folds, no corrections of the old one
        params.update(test_all=True, folds=None, relabel=None, extra=None)
    elif params.get("demo"):  # the demo photos (made again if the cache was emptied)
        from product_cnn.data.demo_data import DemoDataModule

        return _build(DemoDataModule, {**params, **overrides}, class_names)
    return _build(ProductDataModule, {**params, **overrides}, class_names)


def _build(cls: type, params: dict[str, Any], class_names: Sequence[str]) -> L.LightningDataModule:
    """``cls`` with the ``params`` it takes (a shards' checkpoint records options a folder lacks, an
    old demo checkpoint ``demo``)."""
    from product_cnn.data.catalogue import PhotoCatalogue

    accepted = set(inspect.signature(cls.__init__).parameters)
    if issubclass(cls, ProductDataModule):
        accepted |= set(inspect.signature(ProductDataModule.__init__).parameters)
        accepted |= set(PhotoCatalogue.OPTIONS)
    accepted -= {"self", "options", "photo_options", "folder_options"}
    return cls(**{k: v for k, v in params.items() if k in accepted and v is not None},
               classes=list(class_names))
