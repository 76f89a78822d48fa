"""After fitting: test the checkpoint the run chose (best by the monitor, or the last epoch)."""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.callbacks import WeightAveraging

log = logging.getLogger(__name__)


def best_score(trainer: L.Trainer) -> dict[str, float]:
    """``{"<monitor>_best": score}`` of the checkpoint callback, what sweeps optimise; else ``{}``."""
    best = trainer.checkpoint_callback
    if best is not None and best.monitor and best.best_model_score is not None:
        return {f"{best.monitor}_best": float(best.best_model_score)}
    return {}


def test_after_fit(trainer: L.Trainer, model: L.LightningModule, datamodule: L.LightningDataModule,
                   *, has_val: bool, tta: str) -> dict[str, float]:
    """Test the saved checkpoint the run chose, saying which; return the test metrics."""
    best = trainer.checkpoint_callback
    best_path = best.best_model_path if best is not None else ""
    if best_path and best.monitor:
        log.info("Testing the best checkpoint: %s", best_path)
    elif best_path:
        log.info("Testing the last epoch's checkpoint (model_checkpoint.monitor=null): %s", best_path)
    elif not has_val:
        log.info("No validation photos (data.val_fraction=0): testing the weights of the last epoch")
    else:
        log.warning("No checkpoint was saved; testing the weights at the end of training")
    # EMA (weight averaging) puts the raw weights back when a checkpoint is loaded, to resume
    # training; the test must see the averaged ones, which were validated and saved
    trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, WeightAveraging)]
    model.tta = tta
    results = trainer.test(model, datamodule=datamodule, ckpt_path=best_path or None, weights_only=True)
    return dict(results[0]) if results else {}
