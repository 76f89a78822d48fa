"""Building the Lightning Trainer from the config: one place for train.py and eval.py."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

from product_cnn.errors import ProductCNNError
from product_cnn.models.precision import resolve_precision

log = logging.getLogger(__name__)


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Every entry with a ``_target_`` in a callbacks/logger config group, instantiated."""
    if not group:
        return []
    return [instantiate(c, _convert_="all") for c in group.values()
            if isinstance(c, DictConfig) and "_target_" in c]


def check_accelerator(trainer_cfg: DictConfig) -> None:
    """Refuse, before any data is read, a GPU run on a machine without (enough) GPUs."""
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    if accelerator not in ("gpu", "cuda"):
        return
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if available == 0:
        raise ProductCNNError(f"trainer.accelerator={accelerator} but this machine has no usable GPU: "
                              "use trainer=default (GPU when there is one, else CPU) or trainer=cpu")
    devices = trainer_cfg.get("devices", 1)
    if isinstance(devices, int) and devices > available:
        raise ProductCNNError(f"trainer.devices={devices} but this machine has {available} GPU(s): "
                              f"set trainer.devices={available} or trainer.devices=auto")


def _no_sync_batchnorm_on_cpu(trainer_cfg: DictConfig) -> None:
    """SyncBatchNorm needs CUDA: under DDP on CPU (gloo) each process keeps its own statistics."""
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if trainer_cfg.get("sync_batchnorm") and on_cpu:
        log.info("trainer.sync_batchnorm needs GPUs: turned off for this CPU run")
        with open_dict(trainer_cfg):
            trainer_cfg.sync_batchnorm = False


def _resolve_precision(trainer_cfg: DictConfig, trained: str | None = None) -> None:
    """``precision: auto`` -> bf16-mixed or 32-true for this device and, for a trained checkpoint,
    its own precision (see precision.py), logged."""
    precision, reason = resolve_precision(str(trainer_cfg.get("precision", "32-true")),
                                          str(trainer_cfg.get("accelerator", "auto")), trained=trained)
    if reason is not None:
        log.info("Precision %s: %s (trainer.precision=auto; set it to override)", precision, reason)
        with open_dict(trainer_cfg):
            trainer_cfg.precision = precision


def build_trainer(cfg: DictConfig, validate: bool = True, extra_callbacks: list[Any] | None = None,
                  trained: str | None = None) -> L.Trainer:
    """``cfg.trainer`` with the callbacks and loggers of ``cfg.callbacks`` and ``cfg.logger`` (and
    ``extra_callbacks``); ``validate=False`` (no validation photos) skips the validation loop;
    ``trained``: the precision of the checkpoint this trainer tests (``auto`` follows it)."""
    check_accelerator(cfg.trainer)
    _no_sync_batchnorm_on_cpu(cfg.trainer)
    _resolve_precision(cfg.trainer, trained)
    return instantiate(
        cfg.trainer,
        callbacks=instantiate_group(cfg.get("callbacks")) + list(extra_callbacks or []),
        logger=instantiate_group(cfg.get("logger")) or False,
        **({} if validate else {"limit_val_batches": 0}),
    )
