"""What answers the requests: the checkpoint's network (torch) or an export of it (ONNX Runtime,
OpenVINO): ``backend=auto`` serves a checkpoint on the runtime predict.py would pick.

Both take the uint8 photo batches of the one image-reading path and return softmax
probabilities (temperature-scaled when calibrated) and, from a checkpoint that carries a feature
bank, the "none of these" similarity; an export gets the same [0, 1] float input the exported
model documents (its temperature and bank are inside it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from product_cnn.confidence.card import ConfidenceCard
from product_cnn.confidence.gate import Gate, GateOptions
from product_cnn.data.images import ImageSize, image_hw
from product_cnn.errors import ProductCNNError
from product_cnn.inference.exported import ExportedPredictor, read_sidecar, sidecar_card
from product_cnn.inference.runtimes import file_digest

BACKENDS = ("auto", "torch", "onnx", "openvino")
EXPORTED = {"onnx": ".onnx", "openvino": ".xml"}  # the exported backends and their files


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
    export: str | None = None  # backend=auto: the checkpoint's cached export that answers
    photos: list[str] | None = None  # the training photo of each bank row (GET /photo/<row>)
    explains: bool = False  # heatmaps on request (explain=1): the checkpoint is at hand

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
                "export": self.export, "version": project, "calibration": calibration, "gate": gate,
                "explain": self.explains}


def resolve_backend(backend: str, ckpt_path: str | None, exported_path: str | None, *, device: str,
                    cache_dir: str | Path | None = None) -> tuple[str, str | None]:
    """(backend, exported model) to serve: ``auto`` on a checkpoint is the runtime predict.py picks
    (:func:`~product_cnn.inference.runtimes.runtime_model`: the checkpoint's cached export on
    OpenVINO or ONNX Runtime, else torch), logged in one line."""
    if backend != "auto":
        return backend, exported_path
    if not ckpt_path:
        raise ProductCNNError("missing config value ckpt_path: serve.py ckpt_path=<checkpoint>")
    from product_cnn.inference.runtimes import runtime_model

    model, runtime = runtime_model(ckpt_path, device=device, cache_dir=cache_dir)
    if runtime == "torch":
        return "torch", None
    return ("onnx" if str(model).endswith(".onnx") else "openvino"), str(model)


def model_info(backend: str, ckpt_path: str | None, onnx_path: str | None, *,
               gate: GateOptions | None = None) -> ModelInfo:
    """Class names, architecture, input size and the gate of what will be served; a one-line error
    if unusable (a target accuracy the held-out photos do not reach, too)."""
    info = _model_info(backend, ckpt_path, onnx_path)
    info.explains = bool(ckpt_path) and not str(ckpt_path).endswith(tuple(EXPORTED.values()))
    similarity = backend == "torch" or "similarity" in read_sidecar(onnx_path).get("outputs", {})
    info.gate = (gate or GateOptions()).build([info.card], unknown=similarity)
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
        source = ckpt_path or onnx_path  # backend=auto: the checkpoint the user gave, served from its export
        return ModelInfo(meta["class_names"], meta.get("arch", "unknown"), [shape[2], shape[3]],
                         str(source), backend, file_digest(source), sidecar_card(meta),
                         decode=meta.get("decode", "full"),
                         export=None if source == onnx_path else str(onnx_path),
                         photos=(meta.get("nearest") or {}).get("photo"))
    if not ckpt_path:
        raise ProductCNNError("missing config value ckpt_path: serve.py ckpt_path=<checkpoint>")
    from product_cnn.models.checkpoint import checkpoint_info, read_checkpoint

    info = checkpoint_info(read_checkpoint(ckpt_path))
    photos = info.card.bank_paths if info.card is not None and info.card.shows_photos else None
    if info.card is not None:
        info.card.bank = info.card.bank_paths = None  # the workers read them from the checkpoint
    return ModelInfo(info.class_names, info.arch, info.image_size, str(ckpt_path), "torch",
                     file_digest(ckpt_path), info.card, decode=info.decode, photos=photos)


class Heatmaps:
    """Grad-CAM overlays of the checkpoint (:mod:`product_cnn.inference.explain`), in PyTorch
    whatever runtime answers: made on the first ``explain=1`` request."""

    def __init__(self, ckpt_path: str, predictor: Any = None) -> None:
        self.ckpt_path, self.predictor, self.explainer = ckpt_path, predictor, None

    def pngs(self, images: torch.Tensor, targets: list[int], photos: list[bytes]) -> list[str]:
        """A PNG data URI per photo: its heatmap for class index ``targets[i]`` over the photo sent."""
        import base64
        import io

        from product_cnn.inference.explain import Explainer, overlay

        if self.explainer is None:
            from product_cnn.inference.predictor import Predictor

            predictor = self.predictor or Predictor.from_checkpoint(self.ckpt_path, device="cpu",
                                                                    gate=GateOptions(unknown=False))
            self.explainer = Explainer(predictor.explain_net, image_hw(predictor.image_size))
        uris = []
        for heat, data in zip(self.explainer.maps(images, targets), photos, strict=True):
            buffer = io.BytesIO()
            overlay(data, heat).save(buffer, format="PNG")
            uris.append("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))
        return uris


class TorchBackend:
    """The checkpoint's network through :class:`~product_cnn.inference.predictor.Predictor` (BN folded)."""

    def __init__(self, ckpt_path: str, device: str, unknown: bool = True) -> None:
        from product_cnn.inference.predictor import Predictor

        gate = GateOptions(unknown=unknown)
        self.predictor = Predictor.from_checkpoint(ckpt_path, device=device, gate=gate)
        self.heatmaps = Heatmaps(ckpt_path, self.predictor)

    def evidence(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None, list[list] | None]:
        """(probabilities, similarity or None, each photo's nearest training photos or None)."""
        probs, sims, found = self.predictor.evidence(images)
        return probs.numpy(), (sims.numpy() if sims is not None else None), found


class ExportedBackend:
    """An exported model through :class:`~product_cnn.inference.exported.ExportedPredictor`: its
    runtime and precision (the checkpoint's own), and the "none of these" similarity when the
    export carries it."""

    def __init__(self, model_path: str, unknown: bool = True, ckpt_path: str | None = None) -> None:
        self.predictor = ExportedPredictor(model_path, gate=GateOptions(unknown=unknown))
        self.heatmaps = Heatmaps(ckpt_path) if ckpt_path else None  # exports have no gradients

    def evidence(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None, list[list] | None]:
        """(probabilities, similarity or None, each photo's nearest training photos or None)."""
        return self.predictor.evidence(images.numpy())


def load_backend(backend: str, ckpt_path: str | None, onnx_path: str | None, *, device: str,
                 unknown: bool = True) -> Any:
    if backend in EXPORTED:
        return ExportedBackend(onnx_path, unknown, ckpt_path)
    return TorchBackend(ckpt_path, device, unknown)
