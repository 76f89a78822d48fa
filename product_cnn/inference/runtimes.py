"""Which predictor classifies: a checkpoint in PyTorch, an ensemble of checkpoints, an exported
ONNX / OpenVINO model, or a checkpoint's OpenVINO export made once into the cache
(``runtime=openvino``); and on which device when several processes share a machine."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from product_cnn.confidence.gate import GateOptions
from product_cnn.errors import ProductCNNError
from product_cnn.inference.exported import ExportedPredictor, cached_export, is_exported

log = logging.getLogger(__name__)

RUNTIME_CHOICES = ("torch", "openvino")


def process_device(device: Any, world: int) -> str:
    """``device``, or under torchrun (``LOCAL_RANK``, several processes) this process's own GPU."""
    device = str(device)
    if world > 1 and device in ("auto", "cuda") and "LOCAL_RANK" in os.environ:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
    return device


def open_predictor(ckpt_path: Any, *, runtime: str = "torch", device: str = "auto", batch_size: int = 32,
                   num_workers: int = 0, tta: str = "none", gate: GateOptions | None = None,
                   precision: str = "auto", cache_dir: str | Path) -> Any:
    """A predictor for ``ckpt_path`` (one or several checkpoints, or an exported model file).

    ``runtime=openvino`` on a checkpoint exports it once into ``<cache_dir>/exports`` (keyed by its
    SHA-256) and runs that, without "none of these" (the export holds no features).
    """
    if runtime not in RUNTIME_CHOICES:
        raise ProductCNNError(f"runtime={runtime!r} is not one of {', '.join(RUNTIME_CHOICES)}")
    model = ckpt_path
    if runtime == "openvino" and not is_exported(ckpt_path):
        if not isinstance(ckpt_path, str) or any(c in ckpt_path for c in "*?[,"):
            raise ProductCNNError("runtime=openvino takes one checkpoint (ensembles: runtime=torch)")
        model = str(cached_export(ckpt_path, cache_dir))
        log.info("runtime=openvino: %s is exported as %s (no \"none of these\": the export holds no "
                 "features)", ckpt_path, model)
    if is_exported(model):
        return ExportedPredictor(model, batch_size=batch_size, tta=tta, gate=gate, precision=precision)
    from product_cnn.inference.predictor import Predictor  # torch: only where a checkpoint runs in it

    return Predictor.from_checkpoint(ckpt_path, device=device, batch_size=batch_size, num_workers=num_workers,
                                     tta=tta, gate=gate, precision=precision)
