"""What answers the requests: the checkpoint's network (torch) or an exported ONNX model.

Both take the uint8 photo batches of the one image-reading path and return softmax
probabilities (temperature-scaled when calibrated) and, from a checkpoint that carries one, the
"none of these" similarity; the ONNX model gets the same [0, 1] float input the exported model
documents (its temperature is inside it; it has no similarity).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from product_cnn.confidence.card import ConfidenceCard
from product_cnn.confidence.gate import Gate, GateOptions
from product_cnn.data.images import ImageSize, image_hw, to_unit_float
from product_cnn.errors import ProductCNNError
from product_cnn.inference.exported import open_session, read_sidecar, sidecar_card

BACKENDS = ("torch", "onnx", "openvino")
EXPORTED = {"onnx": ".onnx", "openvino": ".xml"}  # the exported backends and their files


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class ModelInfo:
    """What ``GET /info`` tells: read in the server process, without loading the network."""

    class_names: list[str]
    arch: str
    image_size: ImageSize
    model_file: str
    backend: str
    sha256: str = field(default="")
    card: ConfidenceCard | None = None
    gate: Gate = field(default_factory=Gate)
    decode: str = "full"  # how the photos were decoded in training (data.decode)

    def as_dict(self) -> dict[str, Any]:
        from importlib.metadata import PackageNotFoundError, version

        try:
            project = version("product-cnn")
        except PackageNotFoundError:
            project = "unknown"
        height, width = image_hw(self.image_size)
        calibration = None if self.card is None else {"temperature": self.card.temperature,
                                                      "source": self.card.source}
        gate = {"min_confidence": self.gate.min_confidence, "target_accuracy": self.gate.target_accuracy,
                "unknown_threshold": self.gate.unknown_threshold, "rule": self.gate.describe()}
        return {"class_names": self.class_names, "architecture": self.arch, "input_size": [height, width],
                "model_file": self.model_file, "sha256": self.sha256, "backend": self.backend,
                "version": project, "calibration": calibration, "gate": gate}


def model_info(backend: str, ckpt_path: str | None, onnx_path: str | None, *,
               gate: GateOptions | None = None) -> ModelInfo:
    """Class names, architecture, input size and the gate of what will be served; a one-line error
    if unusable (a target accuracy the held-out photos do not reach, too)."""
    info = _model_info(backend, ckpt_path, onnx_path)
    info.gate = (gate or GateOptions()).build([info.card], unknown=backend == "torch")
    return info


def _model_info(backend: str, ckpt_path: str | None, onnx_path: str | None) -> ModelInfo:
    if backend not in BACKENDS:
        raise ProductCNNError(f"backend={backend!r} is not one of {', '.join(BACKENDS)}")
    if backend in EXPORTED:
        key = "onnx_path" if backend == "onnx" else "openvino_path"
        if not onnx_path or Path(str(onnx_path)).suffix.lower() != EXPORTED[backend]:
            raise ProductCNNError(f"backend={backend} needs {key}=<model{EXPORTED[backend]}> "
                                  f"(written by export.py format={backend})")
        meta = read_sidecar(onnx_path)
        shape = meta["input"]["shape"]
        return ModelInfo(meta["class_names"], meta.get("arch", "unknown"), [shape[2], shape[3]],
                         str(onnx_path), backend, sha256_of(onnx_path), sidecar_card(meta),
                         decode=meta.get("decode", "full"))
    if not ckpt_path:
        raise ProductCNNError("missing config value ckpt_path: serve.py ckpt_path=<checkpoint>")
    from product_cnn.models.checkpoint import checkpoint_info, read_checkpoint

    info = checkpoint_info(read_checkpoint(ckpt_path))
    if info.card is not None:
        info.card.bank = None  # the workers read it from the checkpoint; this process needs the threshold
    return ModelInfo(info.class_names, info.arch, info.image_size, str(ckpt_path), "torch",
                     sha256_of(ckpt_path), info.card, decode=info.decode)


class TorchBackend:
    """The checkpoint's network through :class:`~product_cnn.inference.predictor.Predictor` (BN folded)."""

    def __init__(self, ckpt_path: str, device: str, unknown: bool = True) -> None:
        from product_cnn.inference.predictor import Predictor

        gate = GateOptions(unknown=unknown)
        self.predictor = Predictor.from_checkpoint(ckpt_path, device=device, gate=gate)

    def scores(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        probs, sims = self.predictor.scores(images)
        return probs.numpy(), (sims.numpy() if sims is not None else None)


class ExportedBackend:
    """An exported model: ``.onnx`` through ONNX Runtime, OpenVINO's ``.xml`` through OpenVINO
    (in the precision OpenVINO picks: bf16 where the CPU computes it natively)."""

    def __init__(self, model_path: str) -> None:
        self.run = open_session(model_path)

    def scores(self, images: torch.Tensor) -> tuple[np.ndarray, None]:
        return self.run(to_unit_float(images).numpy()), None


def load_backend(backend: str, ckpt_path: str | None, onnx_path: str | None, *, device: str,
                 unknown: bool = True) -> Any:
    return ExportedBackend(onnx_path) if backend in EXPORTED else TorchBackend(ckpt_path, device, unknown)
