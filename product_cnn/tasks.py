"""What the entry points run: train, evaluate, check_data, prepare_data, predict, export,
find_label_issues, import_keras, serve. Each is a recipe of calls into the sub-packages, which
make the choices (:func:`product_cnn.cli.run` turns a user's error into one line). Lightning and
the training stack are imported inside the tasks that need them: predict.py starts faster."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from product_cnn.runtime import tune_malloc

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the model, then test the best checkpoint; return all final metrics."""
    from hydra.utils import instantiate

    from product_cnn.evaluation.sweep import check_optimized_metric, refresh_cv_summary
    from product_cnn.training.fit import fit_and_test, print_summary, start_run
    from product_cnn.training.probe import fit_probe_head, save_probe

    tune_malloc()
    start = start_run(cfg)  # the device, the checkpoint to resume and the final test's TTA checked; seeded
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    if cfg.get("summary_only"):  # the model's table for these classes, no data check, no training
        return print_summary(cfg.model, datamodule)
    datamodule.setup("fit")
    check_optimized_metric(cfg, bool(datamodule.split_samples.get("val")))
    model = instantiate(cfg.model, _recursive_=False, _convert_="all", **datamodule.model_args())
    start.fit_model(model, datamodule.root)  # resumed: the checkpoint fits; extend=: its weights loaded
    if cfg.get("probe"):  # a linear head on cached features: experiment=probe, or LP-FT's first step
        fit_probe_head(cfg.probe, model, datamodule, seed=cfg.get("seed"), confidence=cfg.get("confidence"))
        if not cfg.probe.get("finetune"):
            return start.report(cfg, datamodule, save_probe(cfg, model, datamodule))
    metrics = fit_and_test(cfg, model, datamodule, ckpt_path=start.ckpt_path, tta=start.tta)
    if start.resumed is not None and cfg.data.get("folds"):
        refresh_cv_summary(cfg.paths.output_dir)  # a resumed fold: its sweep's summary counts it now
    return start.report(cfg, datamodule, metrics)  # extend=: how the old classes moved (extension.md)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test a saved checkpoint on its own test split or on another folder; return the metrics."""
    from product_cnn.data.for_checkpoint import open_test_data
    from product_cnn.models.checkpoint import checkpoint_info, read_checkpoint
    from product_cnn.models.tta import check_tta
    from product_cnn.training.fit import format_metrics
    from product_cnn.training.module import ProductClassifier
    from product_cnn.training.trainer import build_trainer, check_accelerator

    tune_malloc()
    check_accelerator(cfg.trainer)
    checkpoint = read_checkpoint(cfg.ckpt_path)
    ckpt_path, info = str(Path(cfg.ckpt_path).expanduser()), checkpoint_info(checkpoint)
    model = ProductClassifier.from_checkpoint_dict(checkpoint, name=f"checkpoint {ckpt_path}")
    model.tta = check_tta(cfg.get("tta", "none"))
    datamodule = open_test_data(info.data, image_size=info.image_size, decode=info.decode,
                                class_names=info.class_names, data_cfg=cfg.get("data"))
    results = build_trainer(cfg, trained=info.precision).test(  # precision=auto: the checkpoint's own
        model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = dict(results[0]) if results else {}
    log.info("Test of %s: %s", ckpt_path, format_metrics(metrics))
    return metrics


def check_data(cfg: DictConfig) -> int:
    """Print what training would see in ``cfg.data``; return the number of unreadable photos."""
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data, check=True, skip_bad_images=True, _convert_="all")
    datamodule.prepare_data()  # the demo photos: made if missing
    print(datamodule.photos.check_report(cfg.show_groups))
    return len(datamodule.photos.check.bad)


def prepare_data(cfg: DictConfig) -> str:
    """Write litdata shards of ``cfg.data``'s photos to ``cfg.output``; return where."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from product_cnn.data.streaming.prepare import prepare_shards

    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    options = cfg.get("storage_options")
    prepare_shards(datamodule.photos, str(cfg.output), image_size=datamodule.hparams.image_size,
                   decode=datamodule.hparams.decode, store=cfg.store, folds=cfg.get("folds"),
                   num_workers=cfg.get("num_workers"), chunk_bytes=str(cfg.chunk_bytes),
                   storage_options=OmegaConf.to_container(options, resolve=True) if options else None)
    return str(cfg.output)


def predict(cfg: DictConfig) -> int:
    """Classify ``cfg.inputs`` with ``cfg.ckpt_path``; write CSV or JSON; return the failure count."""
    from product_cnn.confidence.gate import GateOptions
    from product_cnn.data.streaming.photos import is_shards, photo_inputs
    from product_cnn.inference.parts import plan_parts, predict_in_parts
    from product_cnn.inference.results import save_predictions
    from product_cnn.inference.runtimes import open_predictor, process_device

    tune_malloc()
    plan = plan_parts(rank=cfg.get("rank"), world_size=cfg.get("world_size"), parts=cfg.get("parts"),
                      output=cfg.output, run_dir=cfg.paths.output_dir, explain=cfg.explain)
    predictor = open_predictor(
        cfg.ckpt_path, runtime=cfg.get("runtime", "auto"), device=process_device(cfg.device, plan.world),
        batch_size=cfg.batch_size, num_workers=0 if is_shards(cfg.inputs) else cfg.num_workers,  # read here
        tta=cfg.get("tta", "none"), gate=GateOptions.from_config(cfg), precision=cfg.get("precision", "auto"),
        cache_dir=cfg.paths.cache_dir, min_agreement=cfg.get("int8_min_agreement"), explain=cfg.explain)
    files = photo_inputs(cfg.inputs, predictor.image_size)  # shards: checked against the model's size
    log.info("Classifying %d %s with %s on %s (%s)", len(files), "shard item(s)" if is_shards(cfg.inputs)
             else "file(s)", predictor.describe(cfg.ckpt_path), predictor.device, predictor.gate.describe())
    if plan.part_size:  # catalogue scale: this rank's parts, merged by the last rank to finish
        return predict_in_parts(predictor, files, cfg.output, topk=cfg.topk, part_size=plan.part_size,
                                rank=plan.rank, world_size=plan.world, sort_dir=cfg.get("sort_into"))[1]
    predictions = predictor.predict(files, topk=cfg.topk, progress=len(files) > cfg.batch_size,
                                    explain=Path(cfg.output).parent / "explain" if cfg.explain else None)
    save_predictions(predictions, cfg.output, cfg.topk, sort_dir=cfg.get("sort_into"), gate=predictor.gate)
    return sum(not p.ok for p in predictions)


def export(cfg: DictConfig) -> str:
    """Export ``cfg.ckpt_path`` to ONNX (fp32 or int8), OpenVINO or TorchScript; return the written path."""
    from product_cnn.inference.quantize import export_at

    return str(export_at(cfg.ckpt_path, cfg.format, cfg.get("output"), precision=str(cfg.precision),
                         min_agreement=cfg.get("int8_min_agreement")))


def find_label_issues(cfg: DictConfig) -> str:
    """Rank the photos of a k-fold sweep whose label is most likely wrong; return the HTML sheet's path."""
    from product_cnn.evaluation.label_issues import write_label_issues

    _, html_path, _ = write_label_issues(cfg.cv_dir, data_root=cfg.get("data_root"),
                                         output_dir=cfg.get("output_dir"), filter_by=cfg.filter_by,
                                         thumbnail=cfg.thumbnail, cache_dir=cfg.paths.cache_dir)
    return str(html_path)


def import_keras(cfg: DictConfig) -> str:
    """Convert a Keras model of the original network into a project checkpoint; return its path."""
    from product_cnn.training.keras_checkpoint import import_keras as convert

    path = convert(cfg.keras_path, cfg.output, list(cfg.class_names) if cfg.get("class_names") else None,
                   cfg.get("image_size"))
    log.info("Wrote %s: evaluate with  python eval.py ckpt_path=%s data.root=/path/to/photos", path, path)
    return str(path)


def serve(cfg: DictConfig) -> None:
    """Serve ``cfg.ckpt_path`` (or an exported ONNX / OpenVINO model) over HTTP until interrupted."""
    from product_cnn.confidence.gate import GateOptions
    from product_cnn.serve.app import build_server
    from product_cnn.serve.shutdown import stop_on_sigterm

    exported = cfg.get("openvino_path") if cfg.backend == "openvino" else cfg.get("onnx_path")
    with stop_on_sigterm() as stopping:  # SIGTERM: predictions in flight answered, new ones 503
        server = build_server(
            ckpt_path=cfg.get("ckpt_path"), backend=cfg.backend, exported_path=exported, device=cfg.device,
            workers=cfg.workers, max_batch_size=cfg.max_batch_size, batch_timeout=cfg.batch_timeout,
            topk=cfg.topk, max_files=cfg.max_files, max_body_mb=cfg.max_body_mb, api_key=cfg.get("api_key"),
            cors_origins=list(cfg.cors_origins or []), timeout=cfg.timeout,
            gate=GateOptions.from_config(cfg), cache_dir=cfg.paths.cache_dir, stopping=stopping)
        log.info("Serving on http://%s:%s/  (POST /predict, GET /info, GET /health)", cfg.host, cfg.port)
        server.run(host=cfg.host, port=int(cfg.port), generate_client_file=False)
