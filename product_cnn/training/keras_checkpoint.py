"""A Keras file of the original network -> a complete project training checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from product_cnn.models.keras_import import (
    KerasImportError,
    check_original,
    infer_image_size,
    read_keras,
    to_state_dict,
)
from product_cnn.training.checkpoint_io import AtomicCheckpointIO
from product_cnn.training.module import ProductClassifier


def import_keras(keras_path: str | Path, output: str | Path, class_names: Sequence[str] | None = None,
                 image_size: int | None = None) -> Path:
    """Write a project checkpoint of the Keras file's network and weights; return its path.

    The checkpoint is a complete training checkpoint at epoch 0 (fresh optimiser state), so
    ``eval.py``, ``predict.py``, ``export.py`` and ``train.py ckpt_path=`` take it like any other.
    """
    layers, shape = read_keras(keras_path)
    weighted = check_original(layers, keras_path)
    recorded = shape[0] if shape else infer_image_size(weighted)
    if shape and (shape[0] != shape[1] or shape[2] != 3):
        raise KerasImportError(f"{keras_path} takes inputs of {shape}; the original network takes "
                               "square RGB photos")
    if image_size is not None and recorded is not None and int(image_size) != recorded:
        raise KerasImportError(f"{keras_path} takes {recorded}x{recorded} inputs, "
                               f"not image_size={image_size}")
    size = int(image_size or recorded or 0)
    if not size:
        raise KerasImportError(f"{keras_path} does not record its input size: "
                               "pass image_size=<side in pixels>")
    classes = weighted[-1].weights[0].shape[-1] if weighted[-1].weights else None
    if not class_names:
        raise KerasImportError(f"Keras files do not record class names: pass class_names=[...] "
                               f"({classes} names, in the order of the model's outputs)")
    if classes != len(class_names):
        raise KerasImportError(f"{keras_path} has {classes} outputs but {len(class_names)} "
                               "class_names were given")
    dropout = next((float(layer.config.get("rate", 0.1)) for layer in layers if layer.kind == "Dropout"), 0.1)
    model = ProductClassifier(class_names=list(class_names), image_size=size, dropout=dropout)
    state = {f"net.{k}": v for k, v in to_state_dict(weighted, size, keras_path).items()}
    model.check_weights_fit(state, f"{keras_path}")
    model.load_state_dict(state)
    # a real Lightning checkpoint at epoch 0: optimiser state and loops, as train.py writes them
    trainer = L.Trainer(max_epochs=0, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, plugins=[AtomicCheckpointIO()])
    empty = DataLoader(TensorDataset(torch.zeros(1, 3, size, size), torch.zeros(1, dtype=torch.long)))
    trainer.fit(model, train_dataloaders=empty, val_dataloaders=empty)
    output = Path(output)
    trainer.save_checkpoint(output)
    return output
