"""End-to-end runs of the entry points: Hydra configs -> train -> checkpoint -> eval."""

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from product_cnn.data.demo import default_demo_root
from product_cnn.tasks import evaluate, train
from tests.helpers import CONF_DIR, REPO, compose_cfg, make_tree


def test_fast_dev_run_on_the_demo_data(train_cfg):
    cfg = train_cfg("debug=fdr", "data.demo_images_per_class=4")
    metrics = train(cfg)
    assert {"train/loss", "val/acc", "test/acc", "test/f1"} <= set(metrics)
    assert Path(default_demo_root(cfg.data.cache_dir), "Stationary", "0003.jpg").is_file()


def test_two_epochs_then_eval_reproduces_the_test_accuracy(train_cfg, tree_factory, tmp_path):
    root = tree_factory({"Bags": 12, "Cups": 12, "Pens": 12})
    cfg = train_cfg("data=folder", f"data.root={root}", "trainer.max_epochs=2")
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    best = next((run / "checkpoints").glob("epoch_*.ckpt"))
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))

    saved = torch.load(best, map_location="cpu", weights_only=True)
    assert saved["hyper_parameters"]["class_names"] == ["Bags", "Cups", "Pens"]
    assert saved["datamodule_hyper_parameters"]["root"] == str(root)

    overrides = ["trainer.accelerator=cpu", "data.num_workers=0", f"ckpt_path={best}"]
    eval_cfg = compose_cfg("eval", overrides, tmp_path / "eval", tmp_path / "cache")
    result = evaluate(eval_cfg)
    assert result["test/acc"] == pytest.approx(metrics["test/acc"])
    assert result["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-5)


def test_without_validation_photos_the_last_epoch_is_saved_and_tested(train_cfg, tree_factory, caplog):
    root = tree_factory({"Bags": 12, "Cups": 12, "Pens": 12})
    cfg = train_cfg("data=folder", f"data.root={root}", "trainer.max_epochs=2", "data.val_fraction=0",
                    "callbacks.model_checkpoint.monitor=null")
    with caplog.at_level("INFO"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = train(cfg)
    assert "val/acc" not in metrics and "test/acc" in metrics
    assert not [w for w in caught if "DataLoader" in str(w.message)]  # no empty validation loop
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch_001.ckpt", "last.ckpt"]  # epochs 0, 1
    tested = torch.load(checkpoints / "epoch_001.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    last = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(tested[k], last[k]) for k in last)
    assert "Testing the last epoch's checkpoint" in caplog.text


def test_eval_refuses_data_with_other_classes(train_cfg, tree_factory, tmp_path):
    from product_cnn.errors import DataError

    root = tree_factory({"Bags": 6, "Cups": 6})
    cfg = train_cfg("data=folder", f"data.root={root}", "trainer.max_epochs=1", "test=false")
    train(cfg)
    best = next(Path(cfg.paths.output_dir, "checkpoints").glob("epoch_*.ckpt"))
    other = tree_factory({"Hats": 6, "Cups": 6}, name="other")
    overrides = [f"ckpt_path={best}", f"data.root={other}"]
    eval_cfg = compose_cfg("eval", overrides, tmp_path / "e", tmp_path / "c")
    with pytest.raises(DataError, match=r"class folder\(s\) Hats in .*other are not among the model's "
                                        r"classes \(Bags, Cups\)"):
        evaluate(eval_cfg)


def test_eval_on_a_shop_folder_tests_every_photo_with_classes_matched_by_name(train_cfg, tree_factory,
                                                                               tmp_path):
    import json

    cfg = train_cfg("data=folder", f"data.root={tree_factory()}", "trainer.max_epochs=1", "test=false")
    train(cfg)
    best = next(Path(cfg.paths.output_dir, "checkpoints").glob("epoch_*.ckpt"))
    shop = make_tree(tmp_path / "shop", {"Pens": 5, "Bags": 4})  # a subset, in another order

    def evaluate_on(folder: Path, *extra: str) -> dict:
        out = tmp_path / f"eval_{folder.name}_{len(extra)}"
        evaluate(compose_cfg("eval", ["trainer.accelerator=cpu", f"ckpt_path={best}", f"data.root={folder}",
                                      *extra], out, tmp_path / "c"))
        return json.loads((out / "metrics.json").read_text())

    report = evaluate_on(shop)
    assert report["class_names"] == ["Bags", "Cups", "Pens"]  # the checkpoint's, by name
    assert report["num_samples"] == 9  # every photo
    assert [report["per_class"][n]["support"] for n in ("Bags", "Cups", "Pens")] == [4, 0, 5]
    split = evaluate_on(tree_factory(name="again"), "data.test_all=false")  # asked for a split
    assert split["num_samples"] == 3  # 10% of each class of 10


@pytest.mark.parametrize(
    ("config", "overrides"),
    [("train", [f"{group}={option.stem}"])
     for group in ("data", "model", "trainer", "logger", "callbacks", "debug")
     for option in sorted((CONF_DIR / group).glob("*.yaml"))]
    + [("train", ["experiment=original"]), ("train", ["experiment=finetune", "data.root=/x"]),
       ("train", ["experiment=slash5"]),
       ("eval", ["ckpt_path=x.ckpt"])],
)
def test_every_config_option_composes(config, overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose(config, overrides=[*overrides, "data.root=/x"] if "data=folder" in overrides
                      else overrides)
    assert cfg.trainer._target_.startswith("lightning")
    if overrides == ["experiment=original"]:
        assert (cfg.trainer.max_epochs, cfg.data.batch_size, cfg.model.optimizer.eps) == (50, 32, 1e-7)
    if overrides == ["experiment=slash5"]:  # the preset measured in docs/models.md
        preset = (cfg.model.arch, cfg.data.image_size, cfg.model.schedule, cfg.tta, cfg.data.val_fraction,
                  cfg.callbacks.model_checkpoint.monitor, cfg.trainer.precision)
        assert preset == ("resnet18", 160, "onecycle", "flip", 0.1, None, "auto")  # 0.1: calibration only


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / args[0]), *args[1:], f"hydra.run.dir={cwd}/out"],
        cwd=cwd, capture_output=True, text=True, timeout=300,
    )


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda tmp: tmp / "nowhere", r"error: data root .*nowhere does not exist"),
        (lambda tmp: (tmp / "one" / "Bags").mkdir(parents=True) or tmp / "one",
         r"error: class folder\(s\) with no images: .*Bags"),
    ],
)
def test_cli_reports_bad_data_in_one_line(tmp_path, make, expected):
    root = make(tmp_path)
    proc = _cli("train.py", "data=folder", f"data.root={root}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    import re

    assert re.search(expected, error_lines[0]), proc.stderr


def test_cli_a_bad_option_value_is_one_line_not_a_hydra_traceback(tmp_path, tree_factory):
    root = tree_factory()
    proc = _cli("train.py", "data=folder", f"data.root={root}", "data.balance=oversample", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "InstantiationException" not in proc.stderr
    assert "error: data.balance='oversample' is not one of none, weighted_loss, sampler" in proc.stderr


def test_cli_asks_for_a_missing_data_root(tmp_path):
    proc = _cli("train.py", "data=folder", cwd=tmp_path)
    assert proc.returncode == 2
    assert "error: missing config value data.root" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cli_gpu_trainer_without_a_gpu_is_one_line_before_any_data_is_read(tmp_path):
    proc = _cli("train.py", "trainer=gpu", "data=folder", f"data.root={tmp_path}/not_read", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "Error executing job" not in proc.stderr
    expected = "error: trainer.accelerator=gpu but this machine has no usable GPU: use trainer=default"
    assert expected in proc.stderr
    assert "does not exist" not in proc.stderr  # refused before the data folder was looked at


def test_cli_eval_of_a_missing_checkpoint(tmp_path):
    proc = _cli("eval.py", f"ckpt_path={tmp_path}/none.ckpt", cwd=tmp_path)
    assert proc.returncode == 2
    assert f"error: checkpoint {tmp_path}/none.ckpt does not exist" in proc.stderr


def test_a_bad_image_in_a_worker_becomes_one_line(tree_factory):
    from torch.utils.data import DataLoader

    from product_cnn.data.dataset import ImageListDataset
    from product_cnn.errors import ImageLoadError, one_line

    root = tree_factory({"Bags": 3, "Cups": 3})
    bad = root / "Bags" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    loader = DataLoader(ImageListDataset([(str(bad), 0)], 32), num_workers=1)
    with pytest.raises(ImageLoadError) as info:
        next(iter(loader))
    assert "Traceback" in str(info.value)  # what the worker sends back...
    line = one_line(info.value)  # ...and what we print
    assert line.startswith(f"cannot read image {bad}: ") and "\n" not in line


def test_cli_train_then_eval_report_the_same_test_accuracy(tmp_path):
    """The real command lines, as a user types them, on a small demo set."""
    import re

    env_cache = f"paths.cache_dir={tmp_path}/cache"
    small = ["data.image_size=64", "data.demo_images_per_class=8", "trainer.max_epochs=2",
             "trainer.accelerator=cpu", env_cache]
    train_proc = _cli("train.py", *small, cwd=tmp_path)
    assert train_proc.returncode == 0, train_proc.stderr[-2000:]
    out = tmp_path / "out"
    assert (out / ".hydra" / "config.yaml").is_file() and (out / "train.log").is_file()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    best = next((out / "checkpoints").glob("epoch_*.ckpt"))
    log = (out / "train.log").read_text()
    assert "Accessories" in log and "total" in log  # classes and split counts are printed
    assert "Non-trainable params: 320 (1.25 KB)" in log and "dense_2 (Dense)" in log  # the model summary
    assert re.search(r"Forward FLOPs per 64x64 image: 0\.06[0-9] G", log)
    epochs = re.findall(r"Epoch (\d)/2  train loss [0-9.]+ acc [0-9.]+  val loss [0-9.]+ acc [0-9.]+ "
                        r"f1 [0-9.]+  [0-9.]+ s  best val/acc [0-9.]+ \(epoch \d\)", log)
    assert epochs == ["1", "2"]  # one line per epoch in the log file, not only on a terminal
    assert "ETA" in log
    trained = re.search(r"Test: test/acc=([0-9.]+)", log).group(1)

    (tmp_path / "e").mkdir()
    eval_proc = _cli("eval.py", f"ckpt_path={best}", "trainer.accelerator=cpu", env_cache, cwd=tmp_path / "e")
    assert eval_proc.returncode == 0, eval_proc.stderr[-2000:]
    evaluated = re.search(r"test/acc=([0-9.]+)", (tmp_path / "e" / "out" / "eval.log").read_text())
    assert evaluated.group(1) == trained


@pytest.mark.parametrize("options", [
    ["trainer.precision=bf16-mixed"],
    ["model.channels_last=true"],
    ["model.channels_last=false"],
    ["model.compile=true"],
])
def test_speed_options_run_a_fast_dev_run(train_cfg, tree_factory, options):
    root = tree_factory({"Bags": 6, "Cups": 6, "Pens": 6})
    cfg = train_cfg("data=folder", f"data.root={root}", "debug=fdr", *options)
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert 0.0 <= metrics["test/acc"] <= 1.0
    # (test_module checks that compiled and channels_last models load the same state dict)
