"""What the entry points run: train, evaluate, check_data, predict, export, find_label_issues,
import_keras, serve; one-line errors."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from product_cnn.atomic import write_text
from product_cnn.checkpoint import read_checkpoint
from product_cnn.cv import ERROR_FILE, sweep_of, write_cv_summary
from product_cnn.data.datamodule import ProductDataModule
from product_cnn.data.folder import scan_tree
from product_cnn.errors import ProductCNNError, SweepError
from product_cnn.module import ProductClassifier, check_tta
from product_cnn.resume import check_resume_fits, resolve_resume
from product_cnn.runtime import quiet_lightning, tune_malloc
from product_cnn.summary import format_summary, summarize_network
from product_cnn.trainer import build_trainer, check_accelerator

log = logging.getLogger(__name__)


def run(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run ``task``; a user-facing error becomes one line on stderr and exit status 2.

    Inside a multirun a failed job does not stop the sweep: its error is logged and left in
    the job folder's ``error.txt`` (named at the end of the sweep, see sweep.py), and the
    result is None; a :class:`SweepError` (every job would fail alike) stops the sweep.
    """
    quiet_lightning()
    if rank_zero_only.rank > 0:
        logging.getLogger("product_cnn").setLevel(logging.WARNING)  # rank 0 tells the story
    try:
        try:
            return task(cfg)
        except InstantiationException as err:  # our error raised while Hydra built an object
            raise _user_error(err) or err from None
    except SIGTERMException:  # Lightning stopped cleanly; ResumeHint said how to resume
        raise SystemExit(128 + signal.SIGTERM) from None
    except (ProductCNNError, MissingMandatoryValue) as err:
        message = one_line(err)
        log.error(message)
        if _in_multirun() and not isinstance(err, SweepError):
            return _job_failed(message)
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as err:
        if not _in_multirun():
            raise
        log.exception("The job failed")
        return _job_failed(f"{type(err).__name__}: {one_line(err)}")


def _user_error(err: BaseException) -> ProductCNNError | None:
    """The :class:`ProductCNNError` that ``err`` was raised from, if any."""
    while err is not None and not isinstance(err, ProductCNNError):
        err = err.__cause__ or err.__context__
    return err


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _job_failed(message: str) -> None:
    write_text(Path(HydraConfig.get().runtime.output_dir, ERROR_FILE), message + "\n")


def one_line(err: BaseException) -> str:
    """The user-facing line of ``err``, also when a DataLoader worker wrapped it in a traceback."""
    text = str(err).strip()
    if isinstance(err, MissingMandatoryValue):
        key = getattr(err, "full_key", "") or text
        return f"missing config value {key}: set it on the command line, e.g. {key}=..."
    last = text.splitlines()[-1] if text else type(err).__name__
    prefix = f"{type(err).__module__}.{type(err).__name__}: "
    return last[len(prefix):] if last.startswith(prefix) else last


def _format_metrics(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the model, then test the best checkpoint; return all final metrics."""
    tune_malloc()
    check_accelerator(cfg.trainer)
    ckpt_path, resumed = resolve_resume(cfg)
    tta = check_tta(cfg.get("tta", "none"))  # the final test's; checked before training
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule: ProductDataModule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    if cfg.get("summary_only"):  # the model's table for these classes, no data check, no training
        return _print_summary(cfg, scan_tree(datamodule.hparams.root, datamodule.hparams.classes).class_names)
    datamodule.setup("fit")
    has_val = bool(datamodule.split_samples.get("val"))
    check_optimized_metric(cfg, has_val)
    extra = {}
    if datamodule.hparams.balance == "weighted_loss":
        extra["class_weights"] = datamodule.class_weights().tolist()
    model: ProductClassifier = instantiate(cfg.model, class_names=datamodule.class_names,
                                           _recursive_=False, _convert_="all", **extra)
    if resumed is not None:
        check_resume_fits(ckpt_path, resumed, model.hparams.arch, datamodule.class_names,
                          datamodule.hparams.root)
        model.check_weights_fit(resumed["state_dict"], f"checkpoint {ckpt_path}")
    trainer = build_trainer(cfg, validate=has_val)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    best = trainer.checkpoint_callback
    if best is not None and best.monitor and best.best_model_score is not None:
        metrics[f"{best.monitor}_best"] = float(best.best_model_score)  # what sweeps optimise

    if cfg.get("test", True):
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
        metrics.update(results[0] if results else {})
        log.info("Test: %s", _format_metrics({k: v for k, v in metrics.items() if k.startswith("test/")}))
    out = cfg.paths.output_dir
    log.info("Outputs in %s  (TensorBoard: tensorboard --logdir %s)", out, out)
    if resumed is not None and cfg.data.get("folds") and not _in_multirun() and sweep_of(out):
        write_cv_summary(sweep_of(out))  # a resumed fold: its sweep's summary counts it now
    return metrics


def check_optimized_metric(cfg: DictConfig, has_val: bool) -> None:
    """Refuse, before training, a metric that a searching sweeper (Optuna) optimises but this run
    cannot log. Plain runs and grid sweeps (Hydra's basic sweeper) ignore ``optimized_metric``."""
    metric = cfg.get("optimized_metric")
    if not metric or not _in_multirun():
        return
    if HydraConfig.get().sweeper.get("_target_", "").endswith("BasicSweeper"):
        return
    fix = "data.val_fraction=0.2 callbacks.model_checkpoint.monitor=val/acc"
    if metric.startswith("val/") and not has_val:
        raise SweepError(f"optimized_metric={metric} needs validation photos, but this run has none "
                         f"(data.val_fraction=0, as in experiment=slash5): add {fix}")
    monitor = OmegaConf.select(cfg, "callbacks.model_checkpoint.monitor")
    if metric.endswith("_best") and monitor != metric.removesuffix("_best"):
        base = metric.removesuffix("_best")
        raise SweepError(f"optimized_metric={metric} is the best {base} that model_checkpoint monitors, "
                         f"but it monitors {monitor}: add callbacks.model_checkpoint.monitor={base}")


def _print_summary(cfg: DictConfig, class_names: list[str]) -> dict[str, float]:
    model: ProductClassifier = instantiate(cfg.model, class_names=class_names, _recursive_=False,
                                           _convert_="all")
    print(format_summary(summarize_network(model.net, model.hparams.image_size)))
    return {}


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test a saved checkpoint on its own test split or on another folder; return the metrics."""
    tune_malloc()
    check_accelerator(cfg.trainer)
    checkpoint = read_checkpoint(cfg.ckpt_path)
    ckpt_path = str(Path(cfg.ckpt_path).expanduser())
    model = ProductClassifier.from_checkpoint_dict(checkpoint, name=f"checkpoint {ckpt_path}")
    model.tta = check_tta(cfg.get("tta", "none"))
    data_cfg = cfg.get("data")
    if data_cfg is not None and "_target_" in data_cfg:  # a whole data config, e.g. data=folder
        datamodule = instantiate(data_cfg, classes=model.class_names, _convert_="all")
    else:
        overrides = OmegaConf.to_container(data_cfg, resolve=True) if data_cfg is not None else None
        datamodule = ProductDataModule.from_checkpoint(checkpoint, overrides, model.class_names)
    datamodule.prepare_data()
    datamodule.setup("test")
    trainer = build_trainer(cfg)
    results = trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = dict(results[0]) if results else {}
    log.info("Test of %s: %s", ckpt_path, _format_metrics(metrics))
    return metrics


def check_data(cfg: DictConfig) -> int:
    """Print what training would see in ``cfg.data``; return the number of unreadable photos."""
    from product_cnn.data.check import check_report

    datamodule: ProductDataModule = instantiate(cfg.data, check=True, skip_bad_images=True, _convert_="all")
    datamodule.prepare_data()
    quiet = logging.getLogger("product_cnn.data.datamodule")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # its INFO lines (split table, groups) are all in the report
    try:
        datamodule.setup("fit")
    finally:
        quiet.setLevel(level)
    print(datamodule.describe())
    print(check_report(datamodule.check, datamodule.tree, datamodule.split_samples,
                       grouped=datamodule.hparams.group_duplicates, show_groups=cfg.show_groups))
    return len(datamodule.check.bad)


def predict(cfg: DictConfig) -> int:
    """Classify ``cfg.inputs`` with ``cfg.ckpt_path``, write CSV or JSON, return the failure count."""
    from product_cnn.ensemble import ProbabilityAverage
    from product_cnn.predict import Predictor, expand_inputs, sort_into, write_predictions

    tune_malloc()
    files = expand_inputs(cfg.inputs)
    predictor = Predictor.from_checkpoint(cfg.ckpt_path, device=cfg.device, batch_size=cfg.batch_size,
                                          num_workers=cfg.num_workers, tta=cfg.get("tta", "none"))
    net = predictor.net
    ensemble = isinstance(net, ProbabilityAverage)
    model = f"an ensemble of {len(net.nets)} checkpoints" if ensemble else cfg.ckpt_path
    log.info("Classifying %d file(s) with %s on %s", len(files), model, predictor.device)
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


def find_label_issues(cfg: DictConfig) -> str:
    """Rank the photos of a k-fold sweep whose label is most likely wrong; return the HTML sheet's path."""
    from product_cnn.label_issues import write_label_issues

    _, html_path, _ = write_label_issues(cfg.cv_dir, cfg.get("data_root"), cfg.get("output_dir"),
                                         cfg.filter_by, cfg.thumbnail, cfg.paths.cache_dir)
    return str(html_path)


def import_keras(cfg: DictConfig) -> str:
    """Convert a Keras model of the original network into a project checkpoint; return its path."""
    from product_cnn.keras_import import import_keras as convert

    class_names = list(cfg.class_names) if cfg.get("class_names") else None
    path = convert(cfg.keras_path, cfg.output, class_names, cfg.get("image_size"))
    log.info("Wrote %s: evaluate with  python eval.py ckpt_path=%s data.root=/path/to/photos", path, path)
    return str(path)


def serve(cfg: DictConfig) -> None:
    """Serve ``cfg.ckpt_path`` (or an exported ONNX model) over HTTP until interrupted."""
    from product_cnn.serve.app import build_server

    server = build_server(cfg.get("ckpt_path"), cfg.backend, cfg.get("onnx_path"), cfg.device, cfg.workers,
                          cfg.max_batch_size, cfg.batch_timeout, cfg.topk, cfg.max_files, cfg.max_body_mb,
                          cfg.get("api_key"), list(cfg.cors_origins or []), cfg.timeout)
    log.info("Serving on http://%s:%s/  (POST /predict, GET /info, GET /health)", cfg.host, cfg.port)
    server.run(host=cfg.host, port=int(cfg.port), generate_client_file=False)
