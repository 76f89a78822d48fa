"""Reading our checkpoints safely (``weights_only``: no pickled code runs) with clear errors."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from product_cnn.errors import CheckpointError

REQUIRED_KEYS = ("state_dict", "hyper_parameters")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint of a :class:`ProductClassifier` onto the CPU.

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
