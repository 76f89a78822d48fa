"""predict.py on an exported model, without PyTorch: ``.onnx`` through ONNX Runtime, ``.xml``
through OpenVINO (``export.py format=onnx|openvino``).

The sidecar (``<model>.json``) gives the class names, the input size, how the checkpoint's photos
were decoded, the precision it was trained in and the calibration (the temperature and the
feature bank are inside the model, which outputs the "none of these" similarity beside the
probabilities). Photos are decoded in a thread pool a batch ahead of the network (Pillow and both
runtimes release the GIL), so decoding and inference overlap.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from product_cnn.confidence.gate import Gate, GateOptions
from product_cnn.data.images import check_decode, load_array
from product_cnn.errors import ImageLoadError, ProductCNNError
from product_cnn.inference.results import Prediction, collect
from product_cnn.models.tta import check_tta

log = logging.getLogger(__name__)

RUNTIMES = {".onnx": "onnxruntime", ".xml": "openvino"}
PRECISIONS = {"32": "f32", "bf16": "bf16"}  # OpenVINO's INFERENCE_PRECISION_HINT


def is_exported(path: str | Path) -> bool:
    """True for a model file :class:`ExportedPredictor` runs (by its suffix)."""
    return isinstance(path, (str, Path)) and Path(str(path)).suffix.lower() in RUNTIMES


def read_sidecar(model_path: str | Path) -> dict[str, Any]:
    """The JSON written next to an exported model, or a one-line error."""
    sidecar = Path(f"{model_path}.json")
    if not Path(model_path).is_file() or not sidecar.is_file():
        raise ProductCNNError(f"{model_path} or its sidecar {sidecar.name} does not exist: export it with  "
                              "python export.py ckpt_path=... format=onnx (or format=openvino)")
    return json.loads(sidecar.read_text())


def sidecar_card(meta: dict[str, Any]) -> Any:
    """The sidecar's calibration as a :class:`~product_cnn.confidence.card.ConfidenceCard` (its
    thresholds; the bank is inside the model), or None. Imports torch: only for a gate that needs
    the card (``target_accuracy``, "none of these") and the server's ``/info``."""
    c = meta.get("calibration")
    if not c:
        return None
    import torch

    from product_cnn.confidence.card import ConfidenceCard

    return ConfidenceCard(c["temperature"], c["source"], torch.tensor(c["heldout_confidence"]),
                          torch.tensor(c["heldout_correct"], dtype=torch.bool),
                          unknown_threshold=c.get("unknown_threshold"), false_unknown=c.get("false_unknown"))


@dataclass(frozen=True)
class UnknownThreshold:
    """The part of a confidence card a gate without ``target_accuracy`` reads (no torch needed)."""

    unknown_threshold: float | None


def export_precision(model_path: str | Path, requested: str, trained: str = "32") -> tuple[str, str | None]:
    """(``"32"`` or ``"bf16"``, why) for ``precision=auto|32|bf16`` on an export: ``auto`` follows
    the checkpoint it was made from (``trained``, from its sidecar), bf16 only on OpenVINO on a CPU
    that computes it natively (ONNX Runtime has no bf16 on CPU)."""
    from product_cnn.models.precision import resolve_precision

    if str(requested) not in ("auto", "int8", *PRECISIONS):
        raise ProductCNNError(f"precision={requested!r} is not one of auto, {', '.join(PRECISIONS)}, int8")
    if trained == "int8" or str(requested) == "int8":
        if trained != "int8":
            raise ProductCNNError(f"precision=int8 takes a checkpoint (quantized from it, cached) or an int8 "
                                  f"export (export.py precision=int8); {Path(model_path).name} is not one")
        return "32", None  # the model's own int8 convolutions; the rest in fp32
    runtime = RUNTIMES[Path(model_path).suffix.lower()]
    resolved, why = resolve_precision(str(requested), "cpu", trained=trained)
    if resolved.startswith("bf16") and runtime == "onnxruntime":
        if str(requested) == "bf16":
            raise ProductCNNError("ONNX Runtime runs the export in fp32 here: precision=auto or 32 "
                                  "(an OpenVINO export, format=openvino, runs bf16)")
        return "32", "ONNX Runtime computes in fp32 on CPU"
    return ("bf16" if resolved.startswith("bf16") else "32"), why


def int8_runtime() -> str:
    """The runtime of an int8 ``.onnx``: OpenVINO where installed (it reads ONNX; faster int8
    kernels), else ONNX Runtime."""
    return "openvino" if importlib.util.find_spec("openvino") else "onnxruntime"


def open_session(model_path: str | Path, precision: str = "32", threads: int | None = None,
                 runtime: str | None = None) -> Callable[[np.ndarray], list[np.ndarray]]:
    """``float32 NCHW batch -> [probabilities, features, (similarity)]`` through ``runtime`` (None:
    the one the file's suffix names), in ``precision`` (``"32"`` or ``"bf16"``: OpenVINO only)."""
    runtime = runtime or RUNTIMES[Path(model_path).suffix.lower()]
    if str(precision) not in PRECISIONS:
        raise ProductCNNError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    try:
        if runtime == "openvino":
            import openvino as ov

            return _openvino_session(ov, model_path, PRECISIONS[str(precision)], threads)
        if str(precision) == "bf16":
            raise ProductCNNError("ONNX Runtime runs the export in fp32 here: precision=auto or 32 "
                                  "(an OpenVINO export, format=openvino, runs bf16)")
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        return lambda batch: session.run(None, {"images": batch})
    except ImportError:
        name = Path(model_path).name
        raise ProductCNNError(f"{name} needs {runtime}: pip install -e \".[export]\"") from None


CHUNK = 4  # photos per OpenVINO request: small batches run faster per photo on CPU (docs/performance.md)


def _openvino_session(ov: Any, model_path: str | Path, hint: str,
                      threads: int | None) -> Callable[[np.ndarray], list[np.ndarray]]:
    """OpenVINO in throughput mode: a batch runs as chunks of :data:`CHUNK` photos on parallel
    requests (one stream per core: less waiting between layers than one request on every core)."""
    config = {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": hint}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = ov.Core().compile_model(str(model_path), "CPU", config)
    queue = ov.AsyncInferQueue(compiled, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    count = len(compiled.outputs)
    results: dict[int, list[np.ndarray]] = {}

    def keep(request: Any, index: int) -> None:
        results[index] = [request.get_output_tensor(k).data.copy() for k in range(count)]

    queue.set_callback(keep)

    def run_openvino(batch: np.ndarray) -> list[np.ndarray]:
        results.clear()
        starts = range(0, len(batch), CHUNK)
        for i, start in enumerate(starts):
            queue.start_async({0: batch[start:start + CHUNK]}, i)
        queue.wait_all()
        return [np.concatenate([results[i][k] for i in range(len(starts))]) for k in range(count)]

    return run_openvino


class ExportedPredictor:
    """An exported model, its sidecar's classes and preprocessing, ready to classify photo files."""

    def __init__(self, model_path: str | Path, *, batch_size: int = 32, tta: str = "none",
                 gate: GateOptions | None = None, precision: str = "auto",
                 workers: int | None = None) -> None:
        meta = read_sidecar(model_path)
        self.model_path = str(model_path)
        self.class_names = list(meta["class_names"])
        self.image_size = tuple(meta["input"]["shape"][2:4])
        self.decode = check_decode(meta.get("decode", "full"))  # exports before the choice: full
        self.nearest = meta.get("nearest")  # the training photo and category of each "nearest" row
        self.batch_size = batch_size
        self.tta = check_tta(tta)
        gate = gate or GateOptions()
        has_similarity = "similarity" in meta.get("outputs", {})
        if gate.target_accuracy is not None:
            cards = [sidecar_card(meta)]
        else:  # "none of these" needs only the threshold: no torch
            cards = [UnknownThreshold((meta.get("calibration") or {}).get("unknown_threshold"))]
        self.gate: Gate = gate.build(cards, unknown=has_similarity)
        trained = meta.get("precision", "32")
        self.precision, reason = export_precision(model_path, precision, trained)
        if reason:
            log.info("Inference precision %s: %s", self.precision, reason)
        self.runtime = int8_runtime() if trained == "int8" else RUNTIMES[Path(model_path).suffix.lower()]
        self.run = open_session(model_path, self.precision, runtime=self.runtime)
        self.workers = workers or min(4, os.cpu_count() or 1)
        self.device = "cpu"

    def describe(self, ckpt_path: str) -> str:
        return f"{ckpt_path} ({self.runtime}{', int8' if self.model_path.endswith('.int8.onnx') else ''})"

    def _decode(self, path: Any) -> tuple[np.ndarray | None, str]:
        try:
            if hasattr(path, "load_array"):  # an input that decodes itself (a shard item)
                return path.load_array(self.image_size, self.decode), ""
            return load_array(str(path), self.image_size, decode=self.decode), ""
        except ImageLoadError as err:
            return None, err.reason or str(err)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for a uint8 ``(N, 3, H, W)`` batch (flip TTA: the mean with the mirror image)."""
        return self.scores(batch)[0]

    def scores(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities, "none of these" similarity or None) for a uint8 ``(N, 3, H, W)`` batch,
        as the checkpoint's Predictor gives them (the similarity from the unflipped view)."""
        probs, sims, _ = self.evidence(batch)
        return probs, sims

    def evidence(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, list[list] | None]:
        """:meth:`scores` and each photo's nearest training photos ((bank row, category, photo,
        similarity) tuples) when the export names them."""
        images = np.multiply(batch, np.float32(1 / 255), dtype=np.float32)
        outputs = self.run(images)
        probs = outputs[0]
        if self.tta == "flip":
            probs = (probs + self.run(np.ascontiguousarray(images[..., ::-1]))[0]) / 2
        sims = outputs[2] if len(outputs) > 2 and self.gate.unknown_threshold is not None else None
        named = self.nearest
        if not named or len(outputs) < 5:
            return probs, sims, None
        found = [[(int(j), named["category"][int(j)], named["photo"][int(j)], round(float(s), 6))
                  for j, s in zip(rows, values, strict=True)] for rows, values in zip(outputs[3], outputs[4],
                                                                                       strict=True)]
        return probs, sims, found

    def iter_predict(self, images: Sequence[str], topk: int = 3) -> Iterator[Prediction]:
        """Yield one :class:`Prediction` per photo file, in order; decoding runs a batch ahead."""
        topk = max(1, min(topk, len(self.class_names)))
        starts = range(0, len(images), self.batch_size)
        with ThreadPoolExecutor(self.workers) as pool:
            def submit(start: int) -> list:
                return [pool.submit(self._decode, p) for p in images[start:start + self.batch_size]]

            pending = submit(0) if len(images) else []
            for start in starts:
                decoded = [f.result() for f in pending]
                pending = submit(start + self.batch_size) if start + self.batch_size < len(images) else []
                good = [a for a, _ in decoded if a is not None]
                probs, sims, found = self.evidence(np.stack(good)) if good else (None, None, None)
                row = 0
                for offset, (array, error) in enumerate(decoded):
                    source = str(images[start + offset])
                    if array is None:
                        yield Prediction(source, error=error)
                        continue
                    order = np.argsort(-probs[row], kind="stable")[:topk]
                    ranked = [(self.class_names[int(i)], float(probs[row, i])) for i in order]
                    sim = None if sims is None else float(sims[row])
                    near = [n[1:] for n in found[row]] if found else []
                    row += 1
                    verdict = self.gate.verdict(ranked[0][1], sim)
                    yield Prediction(source, verdict or ranked[0][0], ranked[0][1], ranked, verdict=verdict,
                                     similarity=sim, nearest=near)

    def predict(self, images: Sequence[str], topk: int = 3, progress: bool = False,
                explain: str | Path | None = None) -> list[Prediction]:
        """Classify photo files; ``progress`` shows a bar for long lists. No heatmaps (``explain``):
        an exported model has no gradients."""
        if explain is not None:
            raise ProductCNNError("explain=true needs the checkpoint in PyTorch: exported models have no "
                                  "gradients; give ckpt_path=<the .ckpt>")
        images = [images] if isinstance(images, (str, Path)) else list(images)
        return collect(self.iter_predict(images, topk), len(images), progress)
