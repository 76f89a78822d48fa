"""What the entry points run: ``train(cfg)`` and ``evaluate(cfg)``, plus one-line error reporting."""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import MissingMandatoryValue

from product_cnn.checkpoint import read_checkpoint
from product_cnn.data.datamodule import ProductDataModule
from product_cnn.errors import CheckpointError, ProductCNNError
from product_cnn.module import ProductClassifier
from product_cnn.outdir import NEEDED_MB, check_writable
from product_cnn.resume import find_last_checkpoint, run_dir_of
from product_cnn.runtime import tune_malloc

log = logging.getLogger(__name__)


def _quiet_lightning() -> None:
    """Drop messages that tell a user nothing about their run."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # eval.py restores weights only; the training callbacks it names are not needed for that
    warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`, callbacks")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: not str(record.msg).startswith("💡 Tip")
    )


def run(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run ``task``; a user-facing error becomes one line on stderr and exit status 2."""
    _quiet_lightning()
    if int(os.environ.get("LOCAL_RANK", 0)) > 0 or int(os.environ.get("NODE_RANK", 0)) > 0:
        logging.getLogger("product_cnn").setLevel(logging.WARNING)  # rank 0 tells the story
    try:
        return task(cfg)
    except SIGTERMException:  # Lightning stopped cleanly; ResumeHint said how to resume
        raise SystemExit(128 + signal.SIGTERM) from None
    except (ProductCNNError, MissingMandatoryValue) as err:
        message = one_line(err)
        log.error(message)
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


def one_line(err: BaseException) -> str:
    """The user-facing line of ``err``, also when a DataLoader worker wrapped it in a traceback."""
    text = str(err).strip()
    if isinstance(err, MissingMandatoryValue):
        key = getattr(err, "full_key", "") or text
        return f"missing config value {key}: set it on the command line, e.g. {key}=..."
    last = text.splitlines()[-1] if text else type(err).__name__
    prefix = f"{type(err).__module__}.{type(err).__name__}: "
    return last[len(prefix):] if last.startswith(prefix) else last


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry with a ``_target_`` in a callbacks/logger config group."""
    if not group:
        return []
    return [instantiate(c) for c in group.values() if isinstance(c, DictConfig) and "_target_" in c]


def _format_metrics(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))


def _resume_checkpoint(cfg: DictConfig) -> tuple[str | None, dict[str, Any] | None]:
    """Resolve ``ckpt_path`` (a path or ``last``) and read it safely; continue in its run folder."""
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
        log.info("Resuming from %s: checkpoints, TensorBoard and reports continue in %s "
                 "(this command's own log: %s)", path, run_dir, cfg.paths.output_dir)
        with open_dict(cfg):
            cfg.paths.output_dir = str(run_dir)
    return str(path), checkpoint


def check_output_dir(output_dir: str, needed_mb: int = NEEDED_MB) -> None:
    """Fail now, not at the first checkpoint, when ``output_dir`` is unwritable or nearly full."""
    check_writable(output_dir, needed_mb)
    try:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write_test"):
            pass
    except OSError as err:
        reason = err.strerror or err
        raise ProductCNNError(f"output directory {output_dir} is not writable: {reason}") from None


def _check_classes(ckpt_path: str, saved: list[str] | None, datamodule: ProductDataModule) -> None:
    if saved and list(saved) != datamodule.class_names:
        raise CheckpointError(
            f"checkpoint {ckpt_path} was trained on classes {list(saved)}, "
            f"but {datamodule.hparams.root} has {datamodule.class_names}"
        )


def _no_sync_batchnorm_on_cpu(cfg: DictConfig) -> None:
    """SyncBatchNorm needs CUDA: under DDP on CPU (gloo) each process keeps its own statistics."""
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if cfg.trainer.get("sync_batchnorm") and on_cpu:
        log.info("trainer.sync_batchnorm needs GPUs: turned off for this CPU run")
        with open_dict(cfg):
            cfg.trainer.sync_batchnorm = False


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the model, then test the best checkpoint; return all final metrics."""
    tune_malloc()
    ckpt_path, resumed = _resume_checkpoint(cfg)
    check_output_dir(cfg.paths.output_dir)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule: ProductDataModule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    if resumed is not None:
        _check_classes(ckpt_path, resumed["hyper_parameters"].get("class_names"), datamodule)
    extra = {}
    if datamodule.hparams.balance == "weighted_loss":
        extra["class_weights"] = datamodule.class_weights().tolist()
        log.info("Class weights (inverse frequency): %s", ", ".join(
            f"{n} {w:.2f}" for n, w in zip(datamodule.class_names, extra["class_weights"], strict=True)))
    model: ProductClassifier = instantiate(
        cfg.model, class_names=datamodule.class_names, _recursive_=False, **extra
    )
    if resumed is not None:
        model.check_weights_fit(resumed["state_dict"], f"checkpoint {ckpt_path}")
    _no_sync_batchnorm_on_cpu(cfg)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=_instantiate_all(cfg.get("callbacks")),
        logger=_instantiate_all(cfg.get("logger")) or False,
    )
    # (the hydra node is present only when composed with return_hydra_config, as in tests)
    run_config = OmegaConf.to_container(
        OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True
    )
    for logger in trainer.loggers:
        logger.log_hyperparams({"config": run_config})

    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    monitor = trainer.checkpoint_callback
    if monitor is not None and monitor.monitor and monitor.best_model_score is not None:
        metrics[f"{monitor.monitor}_best"] = float(monitor.best_model_score)  # what sweeps optimise

    if cfg.get("test", True):
        checkpoint = trainer.checkpoint_callback
        best = checkpoint.best_model_path if checkpoint is not None else ""
        if best:
            log.info("Testing the best checkpoint: %s", best)
        else:
            log.warning("No checkpoint was saved; testing the weights at the end of training")
        results = trainer.test(model, datamodule=datamodule, ckpt_path=best or None, weights_only=True)
        metrics.update(results[0] if results else {})
        log.info("Test: %s", _format_metrics({k: v for k, v in metrics.items() if k.startswith("test/")}))
    out = cfg.paths.output_dir
    log.info("Outputs in %s  (TensorBoard: tensorboard --logdir %s)", out, out)
    return metrics


def datamodule_from_checkpoint(checkpoint: dict[str, Any], data_cfg: DictConfig | None) -> ProductDataModule:
    """The data set a checkpoint was trained on, with any non-null ``data_cfg`` field overriding it.

    A ``data_cfg`` with a ``_target_`` (e.g. ``data=folder``) is used as is instead.
    """
    if data_cfg is not None and "_target_" in data_cfg:
        return instantiate(data_cfg)
    saved = checkpoint.get("datamodule_hyper_parameters")
    overrides = {k: v for k, v in (data_cfg or {}).items() if v is not None}
    if not saved and "root" not in overrides:
        raise CheckpointError("the checkpoint does not record its data set: pass data.root=/path/to/photos")
    params = dict(saved or {})
    if "root" in overrides:  # a user folder, never a place to generate demo data into
        params["demo"] = False
    params.update(overrides)
    return ProductDataModule(**params)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test a saved checkpoint on a data set; return the test metrics."""
    tune_malloc()
    ckpt_path = str(Path(cfg.ckpt_path).expanduser())
    checkpoint = read_checkpoint(ckpt_path)
    model = ProductClassifier.from_checkpoint_dict(checkpoint, name=f"checkpoint {ckpt_path}")
    datamodule = datamodule_from_checkpoint(checkpoint, cfg.get("data"))
    datamodule.prepare_data()
    datamodule.setup("test")
    _check_classes(ckpt_path, model.class_names, datamodule)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=_instantiate_all(cfg.get("callbacks")),
        logger=_instantiate_all(cfg.get("logger")) or False,
    )
    results = trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = dict(results[0]) if results else {}
    log.info("Test of %s: %s", ckpt_path, _format_metrics(metrics))
    return metrics


def check_data(cfg: DictConfig) -> int:
    """Print what training would see in ``cfg.data``; return the number of unreadable photos."""
    from product_cnn.data.check import exact_duplicate_groups, size_and_mode_summary

    datamodule: ProductDataModule = instantiate(cfg.data, check=True, skip_bad_images=True)
    datamodule.prepare_data()
    quiet = logging.getLogger("product_cnn.data.datamodule")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # its INFO lines (split table, groups) are all in the summary
    try:
        datamodule.setup("fit")
    finally:
        quiet.setLevel(level)
    check = datamodule.check
    tree = datamodule.tree
    lines = [datamodule.describe(), size_and_mode_summary(check.infos)]
    if tree.ignored:
        lines.append(f"ignored (not images): {len(tree.ignored)}, e.g. {', '.join(tree.ignored[:3])}")
    lines.append(f"unreadable: {len(check.bad)}")
    lines += [f"  {i.path}: {i.error}" for i in check.bad]
    exact = exact_duplicate_groups(check.infos)
    lines.append(f"exact duplicates: {len(exact)} group(s) of {sum(map(len, exact))} files")
    photos = sum(map(len, check.groups))
    kept = not tree.presplit and datamodule.hparams.group_duplicates
    lines.append(f"near-duplicates: {len(check.groups)} group(s) of {photos} photos"
                 + (", each kept within one split" if kept else ""))
    split_of = {p: s for s, samples in datamodule.split_samples.items() for p, _ in samples}
    for group in check.groups[: cfg.show_groups]:
        lines.append("  " + "  ".join(f"{p} [{split_of.get(p, '-')}]" for p in group))
    if len(check.groups) > cfg.show_groups:
        lines.append(f"  ... {len(check.groups) - cfg.show_groups} more (show_groups=N)")
    if tree.presplit:
        lines.append(f"near-duplicates across splits (leakage): {len(check.leaks)} group(s)")
    print("\n".join(lines))
    return len(check.bad)


def predict(cfg: DictConfig) -> int:
    """Classify ``cfg.inputs`` with ``cfg.ckpt_path``, write CSV or JSON, return the failure count."""
    from product_cnn.predict import Predictor, expand_inputs, sort_into, write_predictions

    tune_malloc()
    files = expand_inputs(cfg.inputs)
    predictor = Predictor.from_checkpoint(cfg.ckpt_path, device=cfg.device, batch_size=cfg.batch_size,
                                          num_workers=cfg.num_workers)
    log.info("Classifying %d file(s) with %s on %s", len(files), cfg.ckpt_path, predictor.device)
    predictions = predictor.predict(files, topk=cfg.topk, progress=len(files) > cfg.batch_size)
    output = write_predictions(predictions, cfg.output, cfg.topk)
    failed = [p for p in predictions if not p.ok]
    for p in failed:
        log.warning("Could not classify %s: %s", p.source, p.error)
    if cfg.get("sort_into"):
        copied = sort_into(predictions, cfg.sort_into)
        log.info("Copied %d file(s) into %s/<category>/ (originals untouched)", copied, cfg.sort_into)
    log.info("Classified %d of %d file(s); %d could not be read%s. Results: %s",
             len(predictions) - len(failed), len(predictions), len(failed),
             " (listed with their error in the results)" if failed else "", output)
    return len(failed)


def export(cfg: DictConfig) -> str:
    """Export ``cfg.ckpt_path`` to ONNX or TorchScript; return the written path."""
    from product_cnn.export import export as export_checkpoint

    return str(export_checkpoint(cfg.ckpt_path, cfg.format, cfg.get("output")))
