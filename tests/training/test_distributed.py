"""Scale-out: 2-process DDP on CPU (gloo) and Hydra multirun sweeps, through the real commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from product_cnn.tasks import evaluate
from tests.helpers import NO_SAME_PHOTO, REPO, compose_cfg, make_tree

TINY = ["data=folder", NO_SAME_PHOTO, "data.image_size=32", "data.batch_size=4", "trainer.accelerator=cpu",
        "callbacks.rich_progress_bar=null", "callbacks.model_summary=null"]


def _train(tmp_path: Path, *overrides: str, multirun: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *(["-m"] if multirun else []), *TINY,
         f"paths.cache_dir={tmp_path / 'cache'}", f"paths.log_dir={tmp_path / 'outputs'}", *overrides],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )


def test_ddp_on_two_cpu_processes_tests_every_image_once(tmp_path):
    # 13 photos per class -> 1 test photo each: 3 test photos do not split evenly over 2 processes
    root = make_tree(tmp_path / "photos", {"Bags": 13, "Cups": 13, "Pens": 13})
    proc = _train(tmp_path, f"data.root={root}", "trainer=ddp", "trainer.devices=2",
                  "trainer.max_epochs=2", f"hydra.run.dir={tmp_path / 'outputs' / 'ddp'}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = tmp_path / "outputs" / "ddp"
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["ddp"]  # one output folder
    assert not list(run.glob(".pl_hydra*"))
    assert len(list((run / "checkpoints").glob("epoch_*.ckpt"))) == 1
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert not [p for p in (run / "tensorboard").iterdir() if p.is_dir()]  # one TensorBoard run
    report = json.loads((run / "metrics.json").read_text())
    assert sum(map(sum, report["confusion_matrix"])) == 3  # each test photo counted once
    assert report["split_sizes"]["test"] == 3

    best = next((run / "checkpoints").glob("epoch_*.ckpt"))
    cfg = compose_cfg("eval", ["trainer.accelerator=cpu", f"ckpt_path={best}"], tmp_path / "eval",
                      tmp_path / "cache")
    single = evaluate(cfg)
    assert single["test/acc"] == pytest.approx(report["accuracy"])
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["confusion_matrix"] == \
        report["confusion_matrix"]


def test_multirun_sweep_trains_one_run_per_value(tmp_path):
    root = make_tree(tmp_path / "photos", {"Bags": 8, "Cups": 8})
    proc = _train(tmp_path, f"data.root={root}", "trainer.max_epochs=1",
                  "model.optimizer.lr=0.001,0.003", f"hydra.sweep.dir={tmp_path / 'sweep'}", multirun=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for job, lr in (("0", 0.001), ("1", 0.003)):
        saved = (tmp_path / "sweep" / job / ".hydra" / "overrides.yaml").read_text()
        assert f"model.optimizer.lr={lr}" in saved
        assert (tmp_path / "sweep" / job / "metrics.json").is_file()


@pytest.mark.slow  # 25 s on 2 cores
def test_optuna_sweep_runs_two_trials_and_maximises_val_acc(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="needs the sweep extra")
    import yaml

    root = make_tree(tmp_path / "photos", {"Bags": 8, "Cups": 8})
    proc = _train(tmp_path, "hparams_search=optuna", f"data.root={root}", "trainer.max_epochs=1",
                  "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2",
                  f"hydra.sweep.dir={tmp_path / 'sweep'}", multirun=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert results["name"] == "optuna"
    assert 0.0 <= results["best_value"] <= 1.0
    # data.batch_size is searched too, but fixed here by the command line (TINY)
    assert set(results["best_params"]) == {"model.optimizer.lr", "model.dropout"}
    trials = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert trials == ["0", "1"]
    best = max(json.loads((tmp_path / "sweep" / t / "metrics.json").read_text())["accuracy"] for t in trials)
    assert 0.0 <= best <= 1.0


@pytest.mark.parametrize(("overrides", "error"), [
    (["experiment=slash5", "data.val_fraction=0"],  # no validation photos
     "optimized_metric=val/acc_best needs validation photos, but this run has none (data.val_fraction=0, "
     "as in experiment=slash5): add data.val_fraction=0.2 callbacks.model_checkpoint.monitor=val/acc"),
    (["callbacks.model_checkpoint.monitor=val/loss", "callbacks.model_checkpoint.mode=min"],
     "optimized_metric=val/acc_best is the best val/acc that model_checkpoint monitors, but it monitors "
     "val/loss: add callbacks.model_checkpoint.monitor=val/acc"),
])
def test_optuna_sweep_of_a_metric_the_run_cannot_log_stops_before_training(tmp_path, overrides, error):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="needs the sweep extra")
    root = make_tree(tmp_path / "photos", {"Bags": 8, "Cups": 8})
    proc = _train(tmp_path, "hparams_search=optuna", *overrides, f"data.root={root}",
                  "data.image_size=32", "trainer.max_epochs=1", "hydra.sweeper.n_trials=2",
                  "hydra.sweeper.sampler.n_startup_trials=2", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                  multirun=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: {error}"
    assert not (tmp_path / "sweep" / "1").exists()  # the sweep stopped at its first trial
    assert not list((tmp_path / "sweep").rglob("*.ckpt"))  # before training
