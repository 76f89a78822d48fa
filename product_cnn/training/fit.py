"""train.py's steps after the data and the model are built: fit, calibrate on the held-out photos,
test the chosen checkpoint; and the model summary (``+summary_only=true``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from product_cnn.training.calibrate import calibrate_after_fit
from product_cnn.training.extend import Extension, plan_extension
from product_cnn.training.final_test import best_score, test_after_fit
from product_cnn.training.resume import check_resume_fits, resolve_resume, step_checkpoints
from product_cnn.training.trainer import build_trainer, check_accelerator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunStart:
    """What train.py settled before reading any photo."""

    ckpt_path: str | None  # the checkpoint to resume from (None: a new run)
    resumed: dict[str, Any] | None  # that checkpoint, read
    tta: str  # the final test's test-time augmentation
    extension: Extension | None = None  # extend=: the checkpoint whose classes this run extends

    def fit_model(self, model: Any, root: str) -> None:
        """A resumed run: refuse a checkpoint that does not fit ``model`` (one line); ``extend=``:
        load its weights into ``model``, its classes' output rows at their indices."""
        if self.resumed is not None:
            check_resume_fits(str(self.ckpt_path), self.resumed, model, root)
        if self.extension is not None:
            self.extension.load_into(model)

    def report(self, cfg: DictConfig, datamodule: Any, metrics: dict[str, float]) -> dict[str, float]:
        """``metrics``, after ``extend=``'s report (extension.md) where the run extended a checkpoint."""
        if self.extension is not None:
            self.extension.report(cfg, datamodule)
        return metrics


def start_run(cfg: DictConfig) -> RunStart:
    """Check the accelerator, the checkpoint to resume (or extend: its classes become
    ``cfg.data.classes``) and the final test's TTA before any data is read (a mistake costs
    seconds, not a data check); seed everything (``cfg.seed``)."""
    import lightning as L

    from product_cnn.models.tta import check_tta

    check_accelerator(cfg.trainer)
    ckpt_path, resumed = resolve_resume(cfg)
    extension = plan_extension(cfg)
    tta = check_tta(cfg.get("tta", "none"))
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    return RunStart(ckpt_path, resumed, tta, extension)


def format_metrics(metrics: dict[str, float]) -> str:
    """``name=value`` pairs, sorted, for one log line."""
    return "  ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))


def fit_and_test(cfg: DictConfig, model: Any, datamodule: Any, *, ckpt_path: str | None,
                 tta: str) -> dict[str, float]:
    """Fit (resuming from ``ckpt_path``), calibrate when there are validation photos, test the best
    checkpoint (``cfg.test``); return every final metric."""
    has_val = bool(datamodule.split_samples.get("val"))
    trainer = build_trainer(cfg, validate=has_val, extra_callbacks=step_checkpoints(cfg))
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()} | best_score(trainer)
    if has_val and (cfg.get("confidence") or {}).get("fit", True):
        calibrate_after_fit(trainer, model, datamodule, tta=tta, options=cfg.get("confidence"))
    if cfg.get("test", True):
        metrics.update(test_after_fit(trainer, model, datamodule, has_val=has_val, tta=tta))
        log.info("Test: %s", format_metrics({k: v for k, v in metrics.items() if k.startswith("test/")}))
    out = cfg.paths.output_dir
    log.info("Outputs in %s  (TensorBoard: tensorboard --logdir %s)", out, out)
    return metrics


def print_summary(model_cfg: DictConfig, datamodule: Any) -> dict[str, float]:
    """Print the Keras-style table of ``model_cfg``'s network for the data's classes (no data check,
    no training); return no metrics."""
    from hydra.utils import instantiate

    from product_cnn.models.summary import format_summary, summarize_network

    class_names = datamodule.peek_class_names()  # shards: their image size known after it
    model = instantiate(model_cfg, class_names=class_names, image_size=datamodule.hparams.image_size,
                        _recursive_=False, _convert_="all")
    print(format_summary(summarize_network(model.net, model.hparams.image_size)))
    return {}
