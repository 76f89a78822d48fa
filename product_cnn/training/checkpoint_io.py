"""Checkpoints written atomically: a temporary file next to the target, fsync, then rename.

Lightning's own ``TorchCheckpointIO`` serialises to memory and then writes the target file in
place, so a process killed during that write (or a full disk) leaves a truncated
``last.ckpt`` that breaks resuming. Here the old file stays until the new one is complete.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from product_cnn.atomic import atomic_path
from product_cnn.errors import CheckpointError


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose saves never leave a partial file behind."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        try:
            with atomic_path(path) as tmp:
                torch.save(checkpoint, tmp)
        except OSError as err:
            reason = "the disk is full" if err.errno == errno.ENOSPC else (err.strerror or str(err))
            raise CheckpointError(f"cannot write checkpoint {path}: {reason}") from None
