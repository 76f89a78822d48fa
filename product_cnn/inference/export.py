"""Export a checkpoint to a self-contained ONNX, OpenVINO (.xml + .bin) or TorchScript file + JSON sidecar.

The exported model takes a float batch ``(N, 3, H, W)`` in [0, 1] (RGB, resized to the
checkpoint's image size) and returns class probabilities ``(N, num_classes)``, temperature-scaled
when the checkpoint is calibrated. The sidecar ``<file>.json`` (e.g. ``best.onnx.json``) holds the
class names, the preprocessing a caller must apply, and the calibration (the temperature and the
held-out confidences from which serve.py reads a ``target_accuracy`` threshold).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import torch
from torch import nn

from product_cnn.atomic import atomic_path, write_text
from product_cnn.data.images import image_hw
from product_cnn.errors import ProductCNNError
from product_cnn.inference.bn_fold import fold_batchnorm
from product_cnn.inference.calibrated import TemperatureScaled
from product_cnn.inference.loading import load_network

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "openvino": ".xml"}  # openvino: + .bin


class ProbabilityModel(nn.Module):
    """The network followed by softmax: what inference returns."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(images), dim=1)


def load_for_export(ckpt_path: str | Path) -> tuple[ProbabilityModel, dict]:
    """The checkpoint's network wrapped with softmax (eval mode, CPU) and its metadata."""
    loaded = load_network(ckpt_path)  # the same rebuild as Predictor's
    loaded.net.to(memory_format=torch.contiguous_format)  # the export's layout is NCHW
    height, width = image_hw(loaded.info.image_size)
    meta = {
        "class_names": loaded.info.class_names,
        "arch": loaded.info.arch,
        "input": {"name": "images", "shape": ["N", 3, height, width], "dtype": "float32",
                  "layout": "NCHW", "channels": "RGB", "range": [0.0, 1.0]},
        "output": {"name": "probabilities", "shape": ["N", len(loaded.info.class_names)]},
        "decode": loaded.info.decode,
        "preprocessing": [
            "decode the image (a JPEG at 1/2, 1/4 or 1/8 scale, the smallest still at least the input "
            "size, when decode is 'reduced': Pillow's Image.draft); apply its EXIF orientation",
            "convert to RGB (transparent pixels onto white)",
            f"resize to {width}x{height} (width x height), bilinear, ignoring aspect ratio",
            "scale pixel values to [0, 1] (divide by 255)",
        ],
        "checkpoint": str(ckpt_path),
        "calibration": None,
    }
    card = loaded.info.card
    if card is not None:  # the bank stays out: "none of these" needs the features, served from checkpoints
        meta["calibration"] = {
            "temperature": card.temperature, "source": card.source, "applied": True,
            "heldout_confidence": [round(float(c), 6) for c in card.heldout_confidence],
            "heldout_correct": [bool(c) for c in card.heldout_correct]}
    net = TemperatureScaled(fold_batchnorm(loaded.net), loaded.info.temperature)
    return ProbabilityModel(net).eval(), meta


def export(ckpt_path: str | Path, fmt: str, output: str | Path | None = None) -> Path:
    """Write ``output`` (default: next to the checkpoint) in ``fmt`` and its ``.json`` sidecar."""
    if fmt not in FORMATS:
        raise ProductCNNError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    model, meta = load_for_export(ckpt_path)
    output = Path(output) if output else Path(ckpt_path).with_suffix(FORMATS[fmt])
    example = torch.rand(2, *meta["input"]["shape"][1:])
    with atomic_path(output) as tmp:
        if fmt == "onnx":
            _export_onnx(model, example, tmp)
        elif fmt == "openvino":
            _export_openvino(model, example, tmp, output)
        else:
            with warnings.catch_warnings():  # TorchScript is deprecated upstream, still widely used
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", FutureWarning)
                torch.jit.save(torch.jit.trace(model, example), str(tmp))
    sidecar = sidecar_path(output)
    write_text(sidecar, json.dumps({"format": fmt, **meta}, indent=2) + "\n")
    log.info("Exported %s to %s (+ %s)", ckpt_path, output, sidecar.name)
    return output


def sidecar_path(model_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json``: class names and preprocessing."""
    return Path(f"{model_path}.json")


def _export_openvino(model: nn.Module, example: torch.Tensor, tmp: Path, output: Path) -> None:
    """OpenVINO IR straight from the network (its own converter): ``tmp`` (.xml) plus the weights,
    moved next to ``output`` as ``<output stem>.bin`` before the .xml lands (the .xml names it)."""
    try:
        import openvino as ov
    except ImportError:
        raise ProductCNNError('OpenVINO export needs the export extra: pip install -e ".[export]"') from None
    shape = [-1, *example.shape[1:]]  # any batch size
    converted = ov.convert_model(model, example_input=(example,), input=[("images", shape)])
    converted.outputs[0].get_tensor().set_names({"probabilities"})
    # the IR names its weights file after itself: write both under the final stem in a scratch folder
    scratch = tmp.parent / f".{output.name}.ir"
    scratch.mkdir(exist_ok=True)
    try:
        ov.save_model(converted, str(scratch / output.name), compress_to_fp16=False)
        os.replace(scratch / output.with_suffix(".bin").name, output.with_suffix(".bin"))
        os.replace(scratch / output.name, tmp)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    try:
        import onnxscript  # noqa: F401  (the torch.export-based exporter needs it)
    except ImportError:
        raise ProductCNNError('ONNX export needs the export extra: pip install -e ".[export]"') from None
    for name in ("onnx_ir", "onnxscript"):  # their pass-by-pass INFO lines are not for users
        logging.getLogger(name).setLevel(logging.WARNING)
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.onnx.export(
        model, (example,), input_names=["images"], output_names=["probabilities"],
        dynamic_shapes={"images": {0: batch}}, dynamo=True, verbose=False,
    )
    program.save(str(path), external_data=False)
