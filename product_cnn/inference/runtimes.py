"""Which predictor classifies, and why: a checkpoint in PyTorch, an ensemble of checkpoints, an
exported ONNX / OpenVINO model, or a checkpoint's export made once into the cache.

``runtime=auto`` (the default) runs one checkpoint on the fastest runtime installed that
reproduces it: OpenVINO, else ONNX Runtime, on the checkpoint's export (made on the first run,
found again by the checkpoint's SHA-256), in the precision the checkpoint was trained in; PyTorch
where neither is installed, on a GPU, for an ensemble, or where the network does not export. One
log line says which and why; ``runtime=torch`` forces PyTorch.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from product_cnn.confidence.gate import GateOptions
from product_cnn.errors import ProductCNNError
from product_cnn.inference.exported import ExportedPredictor, int8_runtime, is_exported

log = logging.getLogger(__name__)

RUNTIME_CHOICES = ("auto", "torch", "openvino", "onnxruntime")
EXPORT_FORMAT = {"openvino": "openvino", "onnxruntime": "onnx"}
SUFFIXES = {"openvino": ".xml", "onnx": ".onnx", "int8": ".int8.onnx"}  # the cached exports
CACHE_VERSION = 3  # bump when export.py's graph changes: its cached exports are made again (3: vote, nearest)


def file_digest(path: str | Path) -> str:
    """The SHA-256 of a file, or a one-line error naming it."""
    import hashlib

    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    except OSError as err:
        raise ProductCNNError(f"{path} cannot be read: {err.strerror or err}") from None
    return digest.hexdigest()


def cached_export(ckpt_path: str | Path, cache_dir: str | Path, fmt: str = "openvino",
                  min_agreement: float | None = None) -> Path:
    """The ``fmt`` export (openvino, onnx, or int8: quantized, refused under ``min_agreement``) of a
    checkpoint, made once into ``<cache_dir>/exports/`` and found again by the checkpoint's SHA-256
    (a changed checkpoint gets its own). Only a first run imports torch, to export."""
    key = f"{file_digest(ckpt_path)[:24]}-v{CACHE_VERSION}"
    model = Path(cache_dir).expanduser() / "exports" / f"{key}{SUFFIXES[fmt]}"
    parts = [model, Path(f"{model}.json")] + ([model.with_suffix(".bin")] if fmt == "openvino" else [])
    if not all(p.is_file() for p in parts):
        if fmt == "int8":  # torch, timm, the data modules: the first run only
            from product_cnn.inference.quantize import quantize_export

            quantize_export(ckpt_path, model, min_agreement=min_agreement)
        else:
            from product_cnn.inference.export import export

            export(ckpt_path, fmt, model)
    return model


def process_device(device: Any, world: int) -> str:
    """``device``, or under torchrun (``LOCAL_RANK``, several processes) this process's own GPU."""
    device = str(device)
    if world > 1 and device in ("auto", "cuda") and "LOCAL_RANK" in os.environ:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
    return device


def installed(runtime: str) -> bool:
    """True when ``runtime``'s package (and for ONNX Runtime, the ONNX exporter's) can be imported."""
    needs = {"openvino": ["openvino"], "onnxruntime": ["onnxruntime", "onnxscript"]}[runtime]
    return all(importlib.util.find_spec(name) is not None for name in needs)


def _on_gpu(device: str) -> bool:
    """Whether ``device`` is a GPU (``auto``: a CUDA GPU is present; torch imported only where the
    NVIDIA driver is loaded)."""
    if device != "auto":
        return device.startswith("cuda")
    if not os.path.isdir("/proc/driver/nvidia/gpus") or not os.listdir("/proc/driver/nvidia/gpus"):
        return False
    import torch

    return torch.cuda.is_available()


def _several(ckpt_path: Any) -> bool:
    """Whether ``ckpt_path`` names several checkpoints (a list, a glob, a comma list): an ensemble."""
    return not isinstance(ckpt_path, (str, Path)) or any(c in str(ckpt_path) for c in "*?[,")


def choose_runtime(ckpt_path: Any, runtime: str = "auto", device: str = "auto",
                   precision: str = "auto") -> tuple[str, str]:
    """(``torch``, ``openvino`` or ``onnxruntime``, why) for ``ckpt_path``; a one-line error for an
    unknown runtime or one that cannot run it."""
    if runtime not in RUNTIME_CHOICES:
        raise ProductCNNError(f"runtime={runtime!r} is not one of {', '.join(RUNTIME_CHOICES)}")
    several = _several(ckpt_path)
    if runtime in EXPORT_FORMAT:
        if several:
            raise ProductCNNError(f"runtime={runtime} takes one checkpoint (ensembles: runtime=torch)")
        if not installed(runtime):
            raise ProductCNNError(f'runtime={runtime} is not installed: pip install -e ".[export]"')
        return runtime, "asked for (runtime=)"
    if runtime == "torch":
        return "torch", "asked for (runtime=torch)"
    if several:
        return "torch", "an ensemble of checkpoints runs in PyTorch"
    if _on_gpu(device):
        return "torch", "a GPU runs PyTorch"
    for candidate in ("openvino", "onnxruntime"):
        if installed(candidate) and not (precision == "bf16" and candidate == "onnxruntime"):
            return candidate, "the fastest exact runtime installed (runtime=torch for PyTorch)"
    return "torch", 'neither OpenVINO nor ONNX Runtime is installed (pip install -e ".[export]" for 2-3x)'


def runtime_model(ckpt_path: Any, *, runtime: str = "auto", device: str = "auto", precision: str = "auto",
                  cache_dir: str | Path | None = None, min_agreement: float | None = None) -> tuple[Any, str]:
    """(what to run: ``ckpt_path`` itself or its cached export, the runtime's name), logged in one
    line with the reason; an export that fails under ``runtime=auto`` falls back to PyTorch.
    ``cache_dir``: where exports are kept (None: the project's cache folder); ``precision=int8``:
    the checkpoint's int8 export (refused under ``min_agreement``, :mod:`.quantize`)."""
    if is_exported(ckpt_path):
        return ckpt_path, "exported"
    if cache_dir is None:
        from product_cnn.data.cache import default_cache_dir

        cache_dir = default_cache_dir()
    if str(precision) == "int8":
        return _int8_model(ckpt_path, runtime, cache_dir, min_agreement)
    chosen, why = choose_runtime(ckpt_path, runtime, device, precision)
    if chosen == "torch":
        log.info("Runtime torch: %s", why)
        return ckpt_path, chosen
    try:
        model = cached_export(ckpt_path, cache_dir, EXPORT_FORMAT[chosen])
    except Exception as err:  # any converter's failure: PyTorch runs it (and reports a bad checkpoint)
        if runtime != "auto":
            raise
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        log.info("Runtime torch: the checkpoint does not export to %s (%s)", chosen, reason)
        return ckpt_path, "torch"
    log.info("Runtime %s: %s; the checkpoint's export %s", chosen, why, model)
    return model, chosen


def _int8_model(ckpt_path: Any, runtime: str, cache_dir: str | Path,
                min_agreement: float | None) -> tuple[Path, str]:
    """The checkpoint's cached int8 export and the runtime that runs it, or a one-line error."""
    if runtime == "torch" or _several(ckpt_path):
        raise ProductCNNError("precision=int8 takes one checkpoint and runs it on ONNX Runtime or OpenVINO "
                              "(not runtime=torch, not an ensemble)")
    if not installed("onnxruntime"):
        raise ProductCNNError('precision=int8 needs ONNX Runtime: pip install -e ".[export]"')
    model = cached_export(ckpt_path, cache_dir, "int8", min_agreement)
    chosen = int8_runtime()
    log.info("Runtime %s (int8): the checkpoint's int8 export %s", chosen, model)
    return model, chosen


def open_predictor(ckpt_path: Any, *, runtime: str = "auto", device: str = "auto", batch_size: int = 32,
                   num_workers: int = 0, tta: str = "none", gate: GateOptions | None = None,
                   precision: str = "auto", cache_dir: str | Path | None = None,
                   min_agreement: float | None = None, explain: bool = False) -> Any:
    """A predictor for ``ckpt_path`` (one or several checkpoints, or an exported model file) on the
    runtime :func:`runtime_model` picks; ``explain`` (heatmaps need gradients): the checkpoint in
    PyTorch, a one-line error for an exported model or runtime."""
    if explain:
        if runtime not in ("auto", "torch") or is_exported(ckpt_path) or precision == "int8":
            raise ProductCNNError("explain=true needs the checkpoint in PyTorch: exported models (ONNX "
                                  "Runtime, OpenVINO, int8) have no gradients; give ckpt_path=<the .ckpt>")
        if runtime == "auto":
            log.info("explain=true: the checkpoint runs in PyTorch (heatmaps need its gradients)")
        runtime = "torch"
    model, _ = runtime_model(ckpt_path, runtime=runtime, device=device, precision=precision,
                             cache_dir=cache_dir, min_agreement=min_agreement)
    if is_exported(model):
        return ExportedPredictor(model, batch_size=batch_size, tta=tta, gate=gate, precision=precision)
    from product_cnn.inference.predictor import Predictor  # torch: only where a checkpoint runs in it

    return Predictor.from_checkpoint(ckpt_path, device=device, batch_size=batch_size, num_workers=num_workers,
                                     tta=tta, gate=gate, precision=precision)
