"""Resuming runs: find the checkpoint to continue from, and say how after an interruption."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from product_cnn.errors import CheckpointError

log = logging.getLogger(__name__)


def find_last_checkpoint(runs_dir: str | Path) -> Path:
    """The newest ``<runs_dir>/<run>/checkpoints/last.ckpt`` (for ``ckpt_path=last``)."""
    candidates = sorted(Path(runs_dir).glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise CheckpointError(
            f"ckpt_path=last: no run with checkpoints/last.ckpt under {runs_dir}; "
            "pass the checkpoint's path instead"
        )
    return candidates[-1]


def run_dir_of(checkpoint: Path) -> Path | None:
    """The run directory a checkpoint of ours was saved in (``<run>/checkpoints/x.ckpt``)."""
    run = checkpoint.resolve().parent.parent
    if checkpoint.resolve().parent.name == "checkpoints" and (run / ".hydra").is_dir():
        return run
    return None


class ResumeHint(Callback):
    """After Ctrl-C or SIGTERM, log which checkpoint is complete and how to resume from it."""

    @rank_zero_only
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            return
        what = "Interrupted" if isinstance(exception, KeyboardInterrupt) else "Stopped by SIGTERM"
        callback = trainer.checkpoint_callback
        last = Path(callback.dirpath or "", "last.ckpt") if callback is not None else None
        if last is not None and last.is_file():
            log.warning("%s during epoch %d. The last complete checkpoint is %s; resume with: "
                        "python train.py ckpt_path=%s", what, trainer.current_epoch + 1, last, last)
        else:
            log.warning("%s during epoch %d, before any checkpoint was saved: nothing to resume",
                        what, trainer.current_epoch + 1)
