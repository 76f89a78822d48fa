"""Export a checkpoint to a self-contained ONNX, OpenVINO (.xml + .bin) or TorchScript file + JSON sidecar.

The exported model takes a float batch ``(N, 3, H, W)`` in [0, 1] (RGB, resized to the
checkpoint's image size) and returns, in this order, class probabilities ``(N, num_classes)``
(temperature-scaled when the checkpoint is calibrated, with its nearest-photo vote mixed in when
it has one), the pooled features ``(N, D)`` and, when
the checkpoint carries a feature bank, the "none of these" similarity ``(N,)``: the bank is inside
the model. The sidecar ``<file>.json`` (e.g. ``best.onnx.json``) holds the class names, the
preprocessing a caller must apply, the precision the checkpoint was trained in, and the
calibration (the temperature, the held-out confidences from which a ``target_accuracy`` threshold
is read, the unknown threshold and the vote's weight).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from product_cnn.atomic import atomic_path, write_text
from product_cnn.confidence.card import ConfidenceCard
from product_cnn.confidence.neighbours import EVIDENCE, mix, neighbour_vote
from product_cnn.confidence.novelty import K, nearest_mean
from product_cnn.data.images import image_hw
from product_cnn.errors import ProductCNNError
from product_cnn.inference.bn_fold import fold_batchnorm
from product_cnn.inference.loading import load_network
from product_cnn.models.networks import last_linear, set_module
from product_cnn.models.penultimate import Penultimate

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "openvino": ".xml"}  # openvino: + .bin


class AnswerModel(nn.Module):
    """What an export computes for a [0, 1] batch: the calibrated probabilities, the pooled
    features (the classifier layer's input) and, where the checkpoint carries a feature bank, the
    "none of these" similarity: the whole answer of the checkpoint's Predictor, on any runtime."""

    def __init__(self, net: nn.Module, temperature: float = 1.0, bank: torch.Tensor | None = None,
                 vote: ConfidenceCard | None = None) -> None:
        super().__init__()
        self.body = copy.deepcopy(net).eval()
        name = last_linear(self.body)
        self.head = self.body.get_submodule(name)
        set_module(self.body, name, nn.Identity())  # the body ends with the classifier layer's input
        self.temperature = float(temperature)
        self.register_buffer("bank", None if bank is None else bank.float())
        self.k = 0 if bank is None else max(1, min(K, len(bank)))  # neighbours averaged, as similarity()
        votes = vote is not None and vote.votes
        self.vote = (vote.vote_share, vote.vote_k, vote.vote_tau) if votes else None  # share, k, tau
        self.register_buffer("vote_bank", vote.bank.float() if votes else None)
        self.register_buffer("vote_labels", vote.bank_labels.long() if votes else None)

    evidence = 0  # nearest training photos output (their bank rows and similarities) when > 0

    @property
    def outputs(self) -> list[str]:
        names = ["probabilities", "features"] + ([] if self.bank is None else ["similarity"])
        return names + (["nearest", "nearest_similarity"] if self.evidence else [])

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.body(images).flatten(1)
        logits = self.head(features)
        if self.temperature != 1.0:
            logits = logits / self.temperature
        probs = torch.softmax(logits, dim=1)
        if self.vote is not None:
            share, k, tau = self.vote
            vote = neighbour_vote(features, self.vote_bank, self.vote_labels, probs.shape[1], k, tau)
            probs = mix(probs, vote, share)
        if self.bank is None:
            return probs, features
        if not self.evidence:
            return probs, features, nearest_mean(features, self.bank, self.k)
        found = (F.normalize(features, dim=1) @ self.bank.T).topk(self.evidence, dim=1)
        return probs, features, nearest_mean(features, self.bank, self.k), found.indices, found.values


def load_for_export(ckpt_path: str | Path) -> tuple[AnswerModel, dict]:
    """The checkpoint's network as an :class:`AnswerModel` (eval mode, CPU, fp32) and its metadata."""
    loaded = load_network(ckpt_path)  # the same rebuild as Predictor's
    loaded.net.to(memory_format=torch.contiguous_format)  # the export's layout is NCHW
    height, width = image_hw(loaded.info.image_size)
    card = loaded.info.card
    unknown = card is not None and card.bank is not None and card.unknown_threshold is not None
    model = AnswerModel(fold_batchnorm(loaded.net), loaded.info.temperature,
                        card.bank if unknown else None, card).eval()
    if unknown and card.shows_photos:  # the nearest training photos: bank rows out, paths in the sidecar
        model.evidence = min(EVIDENCE, len(card.bank))
    check_split(model, loaded.net, (height, width), str(ckpt_path))
    classes = len(loaded.info.class_names)
    outputs = {"probabilities": ["N", classes], "features": ["N", model.head.in_features],
               "similarity": ["N"], "nearest": ["N", model.evidence],
               "nearest_similarity": ["N", model.evidence]}
    meta = {
        "class_names": loaded.info.class_names,
        "arch": loaded.info.arch,
        "precision": loaded.info.precision,  # what the checkpoint was trained in: precision=auto follows it
        "input": {"name": "images", "shape": ["N", 3, height, width], "dtype": "float32",
                  "layout": "NCHW", "channels": "RGB", "range": [0.0, 1.0]},
        "output": {"name": "probabilities", "shape": ["N", classes]},
        "outputs": {name: outputs[name] for name in model.outputs},
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
        "nearest": None if not model.evidence else {  # rows of the "nearest" output
            "category": [loaded.info.class_names[int(c)] for c in card.bank_labels],
            "photo": card.bank_paths},
    }
    if card is not None:  # the bank is inside the model (its similarity output); the thresholds here
        meta["calibration"] = {
            "temperature": card.temperature, "source": card.source, "applied": True,
            "heldout_confidence": [round(float(c), 6) for c in card.heldout_confidence],
            "heldout_correct": [bool(c) for c in card.heldout_correct],
            "unknown_threshold": card.unknown_threshold if unknown else None,
            "false_unknown": card.false_unknown if unknown else None,
            "vote": {"share": card.vote_share, "k": card.vote_k, "tau": card.vote_tau, "bank": len(card.bank),
                     "applied": True} if model.vote is not None else None}  # inside the model
    return model, meta


@torch.no_grad()
def check_split(model: AnswerModel, net: nn.Module, image_hw: tuple[int, int], name: str) -> None:
    """One line if the network does more after its last linear layer than the export would."""
    example = torch.rand(2, 3, *image_hw, generator=torch.Generator().manual_seed(0))
    want = torch.softmax(net.eval()(example).float() / model.temperature, dim=1)
    if model.vote is not None:
        share, k, tau = model.vote
        with Penultimate(net) as grab:
            net(example)
            vote = neighbour_vote(grab.take(), model.vote_bank, model.vote_labels, want.shape[1], k, tau)
        want = mix(want, vote, share)
    if not torch.allclose(model(example)[0], want, atol=1e-5):
        raise ProductCNNError(f"{name}: its network does not end with its last linear layer; "
                              "predict it with runtime=torch")


def export(ckpt_path: str | Path, fmt: str, output: str | Path | None = None) -> Path:
    """Write ``output`` (default: next to the checkpoint) in ``fmt`` and its ``.json`` sidecar
    (int8: :func:`product_cnn.inference.quantize.export_at`)."""
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


def _export_openvino(model: AnswerModel, example: torch.Tensor, tmp: Path, output: Path) -> None:
    """OpenVINO IR straight from the network (its own converter): ``tmp`` (.xml) plus the weights,
    moved next to ``output`` as ``<output stem>.bin`` before the .xml lands (the .xml names it)."""
    try:
        import openvino as ov
    except ImportError:
        raise ProductCNNError('OpenVINO export needs the export extra: pip install -e ".[export]"') from None
    shape = [-1, *example.shape[1:]]  # any batch size
    converted = ov.convert_model(model, example_input=(example,), input=[("images", shape)])
    for port, name in zip(converted.outputs, model.outputs, strict=True):
        port.get_tensor().set_names({name})
    # the IR names its weights file after itself: write both under the final stem in a scratch folder
    scratch = tmp.parent / f".{output.name}.ir"
    scratch.mkdir(exist_ok=True)
    try:
        ov.save_model(converted, str(scratch / output.name), compress_to_fp16=False)
        os.replace(scratch / output.with_suffix(".bin").name, output.with_suffix(".bin"))
        os.replace(scratch / output.name, tmp)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _export_onnx(model: AnswerModel, example: torch.Tensor, path: Path) -> None:
    try:
        import onnxscript  # noqa: F401  (the torch.export-based exporter needs it)
    except ImportError:
        raise ProductCNNError('ONNX export needs the export extra: pip install -e ".[export]"') from None
    for name in ("onnx_ir", "onnxscript"):  # their pass-by-pass INFO lines are not for users
        logging.getLogger(name).setLevel(logging.WARNING)
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.onnx.export(
        model, (example,), input_names=["images"], output_names=model.outputs,
        dynamic_shapes={"images": {0: batch}}, dynamo=True, verbose=False,
    )
    program.save(str(path), external_data=False)
