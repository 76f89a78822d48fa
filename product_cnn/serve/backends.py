"""What answers the requests: the checkpoint's network (torch) or an exported ONNX model.

Both take the uint8 photo batches of the one image-reading path and return softmax
probabilities; the ONNX model gets the same [0, 1] float input the exported model documents.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from product_cnn.data.images import ImageSize, image_hw, to_unit_float
from product_cnn.errors import ProductCNNError

BACKENDS = ("torch", "onnx")


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

    def as_dict(self) -> dict[str, Any]:
        from importlib.metadata import PackageNotFoundError, version

        try:
            project = version("product-cnn")
        except PackageNotFoundError:
            project = "unknown"
        height, width = image_hw(self.image_size)
        return {"class_names": self.class_names, "architecture": self.arch, "input_size": [height, width],
                "model_file": self.model_file, "sha256": self.sha256, "backend": self.backend,
                "version": project}


def model_info(backend: str, ckpt_path: str | None, onnx_path: str | None) -> ModelInfo:
    """Class names, architecture and input size of what will be served; a one-line error if unusable."""
    if backend not in BACKENDS:
        raise ProductCNNError(f"backend={backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "onnx":
        if not onnx_path:
            raise ProductCNNError("backend=onnx needs onnx_path=<model.onnx> "
                                  "(written by export.py format=onnx)")
        sidecar = Path(f"{onnx_path}.json")
        if not Path(onnx_path).is_file() or not sidecar.is_file():
            raise ProductCNNError(f"{onnx_path} or its sidecar {sidecar.name} does not exist: "
                                  "export it with  python export.py ckpt_path=... format=onnx")
        meta = json.loads(sidecar.read_text())
        shape = meta["input"]["shape"]
        return ModelInfo(meta["class_names"], meta.get("arch", "unknown"), [shape[2], shape[3]],
                         str(onnx_path), "onnx", sha256_of(onnx_path))
    if not ckpt_path:
        raise ProductCNNError("missing config value ckpt_path: serve.py ckpt_path=<checkpoint>")
    from product_cnn.training.checkpoint import read_checkpoint

    hparams = read_checkpoint(ckpt_path)["hyper_parameters"]
    names = list(hparams.get("class_names") or [str(i) for i in range(hparams.get("num_classes", 0))])
    return ModelInfo(names, hparams.get("arch", "keras_cnn"), hparams.get("image_size", 256),
                     str(ckpt_path), "torch", sha256_of(ckpt_path))


class TorchBackend:
    """The checkpoint's network through :class:`~product_cnn.inference.predictor.Predictor` (BN folded)."""

    def __init__(self, ckpt_path: str, device: str) -> None:
        from product_cnn.inference.predictor import Predictor

        self.predictor = Predictor.from_checkpoint(ckpt_path, device=device)

    def probabilities(self, images: torch.Tensor) -> np.ndarray:
        return self.predictor.probabilities(images).numpy()


class OnnxBackend:
    """An exported ONNX model through onnxruntime."""

    def __init__(self, onnx_path: str) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def probabilities(self, images: torch.Tensor) -> np.ndarray:
        return self.session.run(None, {"images": to_unit_float(images).numpy()})[0]


def load_backend(backend: str, ckpt_path: str | None, onnx_path: str | None, device: str) -> Any:
    return OnnxBackend(onnx_path) if backend == "onnx" else TorchBackend(ckpt_path, device)
