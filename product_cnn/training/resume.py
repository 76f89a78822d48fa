"""Resuming runs: find the checkpoint to continue from, and say how after an interruption."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, open_dict

from product_cnn.errors import CheckpointError
from product_cnn.models.checkpoint import read_checkpoint
from product_cnn.training.outdir import check_writable

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


def resolve_resume(cfg: DictConfig) -> tuple[str | None, dict[str, Any] | None]:
    """The checkpoint ``cfg.ckpt_path`` names (a path or ``last``), read safely, or (None, None).

    A checkpoint of one of our runs continues in that run's folder: ``cfg.paths.output_dir``
    is switched to it (after checking that it can still be written).
    """
    if not cfg.get("ckpt_path"):
        return None, None
    if str(cfg.ckpt_path) == "last":
        path = find_last_checkpoint(Path(cfg.paths.log_dir) / cfg.task_name)
    else:
        path = Path(str(cfg.ckpt_path)).expanduser()
    checkpoint = read_checkpoint(path)  # weights_only: refuses pickled code, names the file
    if "optimizer_states" not in checkpoint or "loops" not in checkpoint:
        raise CheckpointError(f"checkpoint {path} holds weights only, not a training state to resume")
    run_dir = run_dir_of(path)
    if run_dir is not None:
        check_writable(run_dir)
        log.info("Resuming from %s: checkpoints, TensorBoard and reports continue in %s "
                 "(this command's own log: %s)", path, run_dir, cfg.paths.output_dir)
        with open_dict(cfg):
            cfg.paths.output_dir = str(run_dir)
    return str(path), checkpoint


def check_resume_fits(ckpt_path: str, checkpoint: dict[str, Any], model: Any, root: str) -> None:
    """A resumed run must build the network and see the class list its checkpoint was trained on,
    and the checkpoint's weights must fit ``model`` (a ProductClassifier)."""
    saved = checkpoint["hyper_parameters"]
    saved_arch = saved.get("arch", "keras_cnn")
    if saved_arch != model.hparams.arch:
        raise CheckpointError(f"checkpoint {ckpt_path} is a {saved_arch} network, not {model.hparams.arch}: "
                              f"resume it with the model it was trained with")
    names = saved.get("class_names")
    if names and list(names) != list(model.class_names):
        raise CheckpointError(f"checkpoint {ckpt_path} was trained on classes {list(names)}, "
                              f"but {root} has {list(model.class_names)}")
    model.check_weights_fit(checkpoint["state_dict"], f"checkpoint {ckpt_path}")


def step_checkpoints(cfg: DictConfig) -> list[Callback]:
    """With ``data.checkpoint_every_n_steps=N``: ``checkpoints/last.ckpt`` also every N training steps,
    mid-epoch (the loader's position is in it), beside the end-of-epoch one; else nothing."""
    every = (cfg.get("data") or {}).get("checkpoint_every_n_steps")
    last = (cfg.get("callbacks") or {}).get("last_checkpoint")
    if not every or not last:
        return []
    return [ModelCheckpoint(dirpath=last.dirpath, filename="last", monitor=None, save_top_k=1,
                            every_n_train_steps=int(every), save_on_train_epoch_end=False,
                            enable_version_counter=False)]


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
