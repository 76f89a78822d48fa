"""What a checkpoint says: read safely (``weights_only``: no pickled code runs), and its metadata
(classes, image size, network, decoding, precision trained in, confidence card) with one set of
fallbacks for checkpoints written by earlier versions. Training, evaluation, inference and the
server all read checkpoints through here."""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from product_cnn.confidence.card import ConfidenceCard
from product_cnn.data.images import ImageSize
from product_cnn.errors import CheckpointError
from product_cnn.models.networks import MIRROR

REQUIRED_KEYS = ("state_dict", "hyper_parameters")
NUM_CLASSES = 5  # a checkpoint that records neither class names nor a count: the model's default
IMAGE_SIZE = 256
DECODE = "full"  # checkpoints written before data.decode existed decoded every photo fully
PRECISION = "32"  # checkpoints written before the precision was recorded: fp32, exact


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint of a product-cnn classifier onto the CPU.

    Raises :class:`CheckpointError` naming the file when it is missing, truncated, carries
    code instead of data, or is not a product-cnn checkpoint.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(f"ckpt_path must be one checkpoint file here, not {list(path)}: several "
                              "checkpoints (an ensemble) are for predict.py")
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"checkpoint {path} was refused: it holds objects other than plain data ({first})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(
            f"checkpoint {path} cannot be read: truncated or not a PyTorch checkpoint ({err})"
        ) from None
    if not isinstance(checkpoint, dict) or any(k not in checkpoint for k in REQUIRED_KEYS):
        raise CheckpointError(
            f"checkpoint {path} is not a product-cnn training checkpoint "
            f"(expected keys {', '.join(REQUIRED_KEYS)})"
        )
    if not any(k.startswith("net.") for k in checkpoint["state_dict"]):
        raise CheckpointError(f"checkpoint {path} holds another model's weights (no 'net.' layers)")
    return checkpoint


def trained_precision(precision: str | None) -> str:
    """Lightning's ``trainer.precision`` (``bf16-mixed``, ``32-true``, ...) -> ``"bf16"`` or ``"32"``."""
    return "bf16" if str(precision or PRECISION).startswith("bf16") else "32"


@dataclass
class CheckpointInfo:
    """What a checkpoint says about itself (see :func:`checkpoint_info`)."""

    class_names: list[str]
    image_size: ImageSize
    arch: str
    dropout: float
    channels_last: bool
    decode: str  # how its photos were decoded (data.decode)
    precision: str  # what it was trained (and tested) in: "32" or "bf16"
    card: ConfidenceCard | None  # temperature, operating points, "none of these"
    data: dict[str, Any] = field(default_factory=dict)  # its data module's options (empty: unrecorded)
    flip_features: bool = False  # several backbones: each one's features averaged with the mirror image's

    @property
    def temperature(self) -> float:
        """The fitted temperature (1 until calibrated)."""
        return self.card.temperature if self.card is not None else 1.0


def checkpoint_info(checkpoint: Mapping[str, Any]) -> CheckpointInfo:
    """A checkpoint dict (from :func:`read_checkpoint`) -> :class:`CheckpointInfo`, with the
    fallbacks of old checkpoints: class names ``0..n-1``, 256 px, the Keras mirror, full decoding,
    fp32."""
    hparams = checkpoint.get("hyper_parameters") or {}
    data = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    names = hparams.get("class_names")
    names = list(names) if names else [str(i) for i in range(hparams.get("num_classes") or NUM_CLASSES)]
    return CheckpointInfo(
        class_names=names,
        image_size=hparams.get("image_size", IMAGE_SIZE),
        arch=hparams.get("arch", MIRROR),
        dropout=hparams.get("dropout", 0.1),
        channels_last=bool(hparams.get("channels_last", False)),
        decode=data.get("decode", DECODE),
        precision=trained_precision(checkpoint.get("precision")),
        card=ConfidenceCard.from_dict(checkpoint.get("confidence")),
        data=data,
        flip_features=bool(hparams.get("flip_features", False)),
    )
