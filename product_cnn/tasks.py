"""What the entry points run: train, evaluate, check_data, prepare_data, predict, export,
find_label_issues, import_keras, serve. Each is a recipe of calls into the sub-packages;
:func:`run` turns a user's error into one line."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from product_cnn.errors import ProductCNNError, SweepError, one_line, user_error
from product_cnn.runtime import quiet_lightning, tune_malloc

# The training stack (Lightning, torchmetrics, ...) is imported by the tasks that need it, so
# that predict.py and serve.py start without it (seconds of a user's wait: docs/performance.md).

log = logging.getLogger(__name__)


def run(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run ``task``; a user-facing error becomes one line on stderr and exit status 2. In a multirun a
    failed job is recorded and the sweep goes on (evaluation/sweep.py), except on a SweepError."""
    quiet_lightning()
    try:
        try:
            return task(cfg)
        except InstantiationException as err:  # our error raised while Hydra built an object
            raise user_error(err) or err from None
    except SystemExit as err:
        if _lightning_sigterm(err):  # Lightning stopped cleanly; ResumeHint said how to resume
            raise SystemExit(128 + signal.SIGTERM) from None
        raise
    except (ProductCNNError, MissingMandatoryValue) as err:
        from product_cnn.evaluation.sweep import in_multirun, record_job_failure

        message = one_line(err)
        log.error(message)
        if in_multirun() and not isinstance(err, SweepError):
            return record_job_failure(message)
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as err:
        from product_cnn.evaluation.sweep import in_multirun, record_job_failure

        if not in_multirun():
            raise
        log.exception("The job failed")
        return record_job_failure(f"{type(err).__name__}: {one_line(err)}")


def _lightning_sigterm(err: SystemExit) -> bool:
    """True for Lightning's SIGTERMException (a SystemExit), without importing Lightning."""
    module = sys.modules.get("lightning.pytorch.utilities.exceptions")
    return module is not None and isinstance(err, module.SIGTERMException)


def _format_metrics(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the model, then test the best checkpoint; return all final metrics."""
    import lightning as L
    from hydra.utils import instantiate

    from product_cnn.data.datamodule import ProductDataModule
    from product_cnn.data.folder import scan_tree
    from product_cnn.data.listing import is_listing, scan_listing
    from product_cnn.evaluation.cv import sweep_of, write_cv_summary
    from product_cnn.evaluation.sweep import check_optimized_metric, in_multirun
    from product_cnn.models.summary import format_summary, summarize_network
    from product_cnn.models.tta import check_tta
    from product_cnn.training.calibrate import calibrate_after_fit
    from product_cnn.training.final_test import best_score, test_after_fit
    from product_cnn.training.probe import fit_probe_head, save_probe
    from product_cnn.training.resume import check_resume_fits, resolve_resume, step_checkpoints
    from product_cnn.training.trainer import build_trainer, check_accelerator

    tune_malloc()
    check_accelerator(cfg.trainer)
    ckpt_path, resumed = resolve_resume(cfg)
    tta = check_tta(cfg.get("tta", "none"))  # the final test's; checked before training
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule: ProductDataModule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    if cfg.get("summary_only"):  # the model's table for these classes, no data check, no training
        if isinstance(datamodule, ProductDataModule):
            hp = datamodule.hparams
            scan = scan_listing if is_listing(hp.root) else scan_tree
            classes = scan(hp.root, hp.classes).class_names
        else:  # shards: their manifest
            datamodule.setup("fit")
            classes = datamodule.class_names
        net = instantiate(cfg.model, class_names=classes, _recursive_=False, _convert_="all")
        print(format_summary(summarize_network(net.net, net.hparams.image_size)))
        return {}
    datamodule.setup("fit")
    has_val = bool(datamodule.split_samples.get("val"))
    check_optimized_metric(cfg, has_val)
    model = instantiate(cfg.model, _recursive_=False, _convert_="all", **datamodule.model_args())
    if resumed is not None:
        check_resume_fits(ckpt_path, resumed, model, datamodule.root)
    if cfg.get("probe"):  # a linear head on cached features: experiment=probe, or LP-FT's first step
        fit_probe_head(cfg.probe, model, datamodule, cfg.get("seed"), cfg.get("confidence"))
        if not cfg.probe.get("finetune"):
            return save_probe(cfg, model, datamodule)
    trainer = build_trainer(cfg, validate=has_val, extra_callbacks=step_checkpoints(cfg))
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()} | best_score(trainer)
    if has_val and (cfg.get("confidence") or {}).get("fit", True):
        calibrate_after_fit(trainer, model, datamodule, tta, cfg.get("confidence"))
    if cfg.get("test", True):
        metrics.update(test_after_fit(trainer, model, datamodule, has_val, tta))
        log.info("Test: %s", _format_metrics({k: v for k, v in metrics.items() if k.startswith("test/")}))
    out = cfg.paths.output_dir
    log.info("Outputs in %s  (TensorBoard: tensorboard --logdir %s)", out, out)
    if resumed is not None and cfg.data.get("folds") and not in_multirun() and sweep_of(out):
        write_cv_summary(sweep_of(out))  # a resumed fold: its sweep's summary counts it now
    return metrics


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test a saved checkpoint on its own test split or on another folder; return the metrics."""
    from product_cnn.data.datamodule import ProductDataModule
    from product_cnn.models.tta import check_tta
    from product_cnn.training.checkpoint import read_checkpoint
    from product_cnn.training.module import ProductClassifier
    from product_cnn.training.trainer import build_trainer, check_accelerator

    tune_malloc()
    check_accelerator(cfg.trainer)
    checkpoint = read_checkpoint(cfg.ckpt_path)
    ckpt_path = str(Path(cfg.ckpt_path).expanduser())
    model = ProductClassifier.from_checkpoint_dict(checkpoint, name=f"checkpoint {ckpt_path}")
    model.tta = check_tta(cfg.get("tta", "none"))
    saved = checkpoint.get("datamodule_hyper_parameters") or {}
    data_cfg = cfg.get("data")
    other_folder = data_cfg is not None and (bool(data_cfg.get("root")) or "_target_" in data_cfg)
    if "input_dir" in saved and not other_folder:  # trained from shards: their test split
        from omegaconf import OmegaConf

        from product_cnn.data.streaming.datamodule import StreamingDataModule

        overrides = OmegaConf.to_container(data_cfg, resolve=True) if data_cfg is not None else None
        datamodule = StreamingDataModule.from_checkpoint(checkpoint, overrides, model.class_names)
    else:  # a folder: the checkpoint's own, another one (data.root=), or a whole data config
        datamodule = ProductDataModule.for_evaluation(checkpoint, data_cfg, model.class_names)
    datamodule.prepare_data()
    datamodule.setup("test")
    results = build_trainer(cfg).test(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = dict(results[0]) if results else {}
    log.info("Test of %s: %s", ckpt_path, _format_metrics(metrics))
    return metrics


def check_data(cfg: DictConfig) -> int:
    """Print what training would see in ``cfg.data``; return the number of unreadable photos."""
    from hydra.utils import instantiate

    from product_cnn.data.datamodule import ProductDataModule

    datamodule: ProductDataModule = instantiate(cfg.data, check=True, skip_bad_images=True, _convert_="all")
    datamodule.prepare_data()
    print(datamodule.check_report(cfg.show_groups))
    return len(datamodule.check.bad)


def prepare_data(cfg: DictConfig) -> str:
    """Write litdata shards of ``cfg.data``'s photos to ``cfg.output``; return where."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from product_cnn.data.streaming.prepare import prepare_shards

    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    options = cfg.get("storage_options")
    options = OmegaConf.to_container(options, resolve=True) if options else None
    prepare_shards(datamodule, str(cfg.output), cfg.store, cfg.get("folds"), cfg.get("num_workers"),
                   str(cfg.chunk_bytes), options)
    return str(cfg.output)


def predict(cfg: DictConfig) -> int:
    """Classify ``cfg.inputs`` with ``cfg.ckpt_path`` (checkpoints, or one exported ``.onnx`` /
    OpenVINO ``.xml`` model, run without PyTorch), write CSV or JSON, return the failure count."""
    from product_cnn.data.cache import default_cache_dir
    from product_cnn.data.folder import expand_inputs
    from product_cnn.data.streaming.photos import is_shards, shard_photos
    from product_cnn.inference.exported import ExportedPredictor, cached_export, is_exported
    from product_cnn.inference.parts import predict_in_parts, rank_and_world
    from product_cnn.inference.results import save_predictions

    tune_malloc()
    rank, world = rank_and_world(cfg.get("rank"), cfg.get("world_size"))
    part_size = cfg.get("parts") or (10_000 if world > 1 else None)
    if world > 1 and str(Path(cfg.output).parent) == str(Path(cfg.paths.output_dir)):
        raise ProductCNNError(f"{world} processes each have their own run folder: give them one output, "
                              "e.g. output=/shared/predictions.csv")
    shards = isinstance(cfg.inputs, str) and is_shards(cfg.inputs)  # a folder made by prepare_data.py
    files = shard_photos(cfg.inputs) if shards else expand_inputs(cfg.inputs)
    ckpt_path = cfg.ckpt_path
    runtime = cfg.get("runtime", "torch")
    if runtime not in ("torch", "openvino"):
        raise ProductCNNError(f"runtime={runtime!r} is not one of torch, openvino")
    if runtime == "openvino" and not is_exported(ckpt_path):
        if not isinstance(ckpt_path, str) or any(c in ckpt_path for c in "*?[,"):
            raise ProductCNNError("runtime=openvino takes one checkpoint (ensembles: runtime=torch)")
        ckpt_path = str(cached_export(ckpt_path, cfg.paths.cache_dir or default_cache_dir()))
        log.info("runtime=openvino: %s is exported as %s (no \"none of these\": the export holds no "
                 "features)", cfg.ckpt_path, ckpt_path)
    if is_exported(ckpt_path):
        predictor = ExportedPredictor(ckpt_path, cfg.batch_size, cfg.get("tta", "none"),
                                      cfg.get("min_confidence"), cfg.get("target_accuracy"),
                                      cfg.get("precision", "auto"))
    else:
        from product_cnn.inference.predictor import Predictor

        workers = 0 if shards else cfg.num_workers  # shard items are read in this process
        device = str(cfg.device)
        if world > 1 and device in ("auto", "cuda") and "LOCAL_RANK" in os.environ:
            import torch  # one GPU per process, as torchrun numbers them

            if torch.cuda.is_available():
                device = f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
        predictor = Predictor.from_checkpoint(cfg.ckpt_path, device, cfg.batch_size, workers,
                                              cfg.get("tta", "none"), cfg.get("min_confidence"),
                                              cfg.get("target_accuracy"), cfg.get("unknown", True),
                                              cfg.get("precision", "32"))
    log.info("Classifying %d %s with %s on %s (%s)", len(files), "shard item(s)" if shards else "file(s)",
             predictor.describe(cfg.ckpt_path), predictor.device, predictor.gate.describe())
    if part_size:  # catalogue scale: this rank's parts, merged by the last rank to finish
        log.info("In parts of %d photos: rank %d of %d", part_size, rank, world)
        _, failed = predict_in_parts(predictor, files, cfg.output, cfg.topk, part_size, rank, world,
                                     cfg.get("sort_into"))
        return failed
    predictions = predictor.predict(files, topk=cfg.topk, progress=len(files) > cfg.batch_size)
    save_predictions(predictions, cfg.output, cfg.topk, cfg.get("sort_into"), predictor.gate)
    return sum(not p.ok for p in predictions)


def export(cfg: DictConfig) -> str:
    """Export ``cfg.ckpt_path`` to ONNX, OpenVINO or TorchScript; return the written path."""
    from product_cnn.inference.export import export as export_checkpoint

    return str(export_checkpoint(cfg.ckpt_path, cfg.format, cfg.get("output")))


def find_label_issues(cfg: DictConfig) -> str:
    """Rank the photos of a k-fold sweep whose label is most likely wrong; return the HTML sheet's path."""
    from product_cnn.evaluation.label_issues import write_label_issues

    _, html_path, _ = write_label_issues(cfg.cv_dir, cfg.get("data_root"), cfg.get("output_dir"),
                                         cfg.filter_by, cfg.thumbnail, cfg.paths.cache_dir)
    return str(html_path)


def import_keras(cfg: DictConfig) -> str:
    """Convert a Keras model of the original network into a project checkpoint; return its path."""
    from product_cnn.training.keras_checkpoint import import_keras as convert

    class_names = list(cfg.class_names) if cfg.get("class_names") else None
    path = convert(cfg.keras_path, cfg.output, class_names, cfg.get("image_size"))
    log.info("Wrote %s: evaluate with  python eval.py ckpt_path=%s data.root=/path/to/photos", path, path)
    return str(path)


def serve(cfg: DictConfig) -> None:
    """Serve ``cfg.ckpt_path`` (or an exported ONNX model) over HTTP until interrupted."""
    from product_cnn.serve.app import build_server
    from product_cnn.serve.shutdown import stop_on_sigterm

    exported = cfg.get("openvino_path") if cfg.backend == "openvino" else cfg.get("onnx_path")
    server = build_server(cfg.get("ckpt_path"), cfg.backend, exported, cfg.device, cfg.workers,
                          cfg.max_batch_size, cfg.batch_timeout, cfg.topk, cfg.max_files, cfg.max_body_mb,
                          cfg.get("api_key"), list(cfg.cors_origins or []), cfg.timeout,
                          cfg.get("min_confidence"), cfg.get("target_accuracy"), cfg.get("unknown", True))
    log.info("Serving on http://%s:%s/  (POST /predict, GET /info, GET /health)", cfg.host, cfg.port)
    with stop_on_sigterm():
        server.run(host=cfg.host, port=int(cfg.port), generate_client_file=False)
