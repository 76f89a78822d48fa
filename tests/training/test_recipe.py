"""Training-recipe options: each composes with the pipeline; EMA weights are the saved ones; flip TTA."""

from pathlib import Path

import pytest
import torch

from product_cnn.inference.predictor import Predictor
from product_cnn.tasks import evaluate, train
from product_cnn.training.schedules import build_schedule
from tests.helpers import compose_cfg

RECIPE = {
    "adamw": ["model.optimizer._target_=torch.optim.AdamW", "+model.optimizer.weight_decay=0.05"],
    "cosine": ["model.schedule=cosine", "model.warmup_epochs=1"],
    "onecycle": ["model.schedule=onecycle"],
    "label_smoothing": ["model.label_smoothing=0.1"],
    "mixup_cutmix": ["data.mixup_alpha=0.2", "data.cutmix_alpha=1.0"],
    "ema": ["callbacks=[default,ema]", "callbacks.rich_progress_bar=null", "callbacks.model_summary=null"],
    "all": ["model=resnet18", "data.image_size=32", "model.optimizer._target_=torch.optim.AdamW",
            "model.schedule=onecycle", "model.label_smoothing=0.1", "data.mixup_alpha=0.2",
            "data.augment=light"],
    "preset_slash5": ["experiment=slash5", "data.image_size=32"],
}


@pytest.mark.parametrize("option", RECIPE)
def test_recipe_option_runs_a_fast_dev_run(option, train_cfg, tree_factory):
    root = tree_factory({"Bags": 6, "Cups": 6, "Pens": 6})
    metrics = train(train_cfg("data=folder", f"data.root={root}", "debug=fdr", *RECIPE[option]))
    assert torch.isfinite(torch.tensor(metrics["train/loss"])) and 0 <= metrics["test/acc"] <= 1


def test_schedules_warm_up_then_decay():
    params = [torch.nn.Parameter(torch.zeros(1))]
    for name in ("cosine", "onecycle"):
        optimizer = torch.optim.AdamW(params, lr=1e-3)
        schedule = build_schedule(name, optimizer, total_steps=100, warmup_steps=10)
        rates = []
        for _ in range(100):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step()
        peak = max(range(100), key=rates.__getitem__)
        assert 8 <= peak <= 11 and rates[0] < 0.1 * rates[peak] and rates[-1] < 0.05 * rates[peak], name
        assert rates[peak] == pytest.approx(1e-3, rel=0.02)


def test_ema_weights_are_validated_tested_and_saved(train_cfg, tree_factory, tmp_path):
    root = tree_factory({"Bags": 8, "Cups": 8, "Pens": 8})
    cfg = train_cfg("data=folder", f"data.root={root}", "trainer.max_epochs=2", "callbacks=[default,ema]",
                    "callbacks.rich_progress_bar=null", "callbacks.model_summary=null")
    metrics = train(cfg)
    best = next(Path(cfg.paths.output_dir, "checkpoints").glob("epoch_*.ckpt"))
    saved = torch.load(best, weights_only=True)
    averaged, raw = saved["state_dict"], saved["current_model_state"]
    key = "net.classifier.0.weight"
    assert not torch.equal(averaged[key], raw[key])  # the average is not the last step's weights...
    result = evaluate(compose_cfg("eval", ["trainer.accelerator=cpu", f"ckpt_path={best}"], tmp_path / "e",
                                  tmp_path / "c"))
    assert result["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-5)  # ...and it was tested


def test_flip_tta_changes_predictions_only_through_the_flip(tiny_run):
    plain = Predictor.from_checkpoint(tiny_run["best"], device="cpu")
    flip = Predictor.from_checkpoint(tiny_run["best"], device="cpu", tta="flip")
    torch.manual_seed(0)
    half = torch.rand(2, 3, 64, 32)
    symmetric = torch.cat([half, half.flip(-1)], dim=-1)  # its own mirror image
    torch.testing.assert_close(flip.probabilities(symmetric), plain.probabilities(symmetric))
    images = torch.rand(2, 3, 64, 64)
    expected = (plain.probabilities(images) + plain.probabilities(images.flip(-1))) / 2
    torch.testing.assert_close(flip.probabilities(images), expected)
    logs = [p.probabilities(images).double().clamp_min(1e-300).log() for p in (flip, plain)]
    assert not torch.allclose(*logs)  # (log: the probabilities themselves may be saturated)


def test_flip_tta_in_eval_reports_tta_metrics(tiny_run, tmp_path):
    overrides = ["trainer.accelerator=cpu", f"ckpt_path={tiny_run['best']}"]
    plain = evaluate(compose_cfg("eval", overrides, tmp_path / "a", tmp_path / "c"))
    flip = evaluate(compose_cfg("eval", [*overrides, "tta=flip"], tmp_path / "b", tmp_path / "c"))
    assert plain["test/loss"] != pytest.approx(flip["test/loss"], rel=1e-6)
    from product_cnn.errors import ProductCNNError

    with pytest.raises(ProductCNNError, match="tta='rotate' is not one of none, flip"):
        evaluate(compose_cfg("eval", [*overrides, "tta=rotate"], tmp_path / "c", tmp_path / "c"))


def test_flip_tta_in_train_tests_like_eval(train_cfg, tree_factory, tmp_path):
    from product_cnn.errors import ProductCNNError

    root = tree_factory({"Bags": 8, "Cups": 8, "Pens": 8})
    bad = train_cfg("data=folder", f"data.root={root}", "tta=rotate")
    with pytest.raises(ProductCNNError, match="tta='rotate' is not one of none, flip"):
        train(bad)
    assert not Path(bad.paths.output_dir, "checkpoints").exists()  # refused before training
    cfg = train_cfg("data=folder", f"data.root={root}", "trainer.max_epochs=2", "tta=flip")
    metrics = train(cfg)
    best = next(Path(cfg.paths.output_dir, "checkpoints").glob("epoch_*.ckpt"))
    overrides = ["trainer.accelerator=cpu", f"ckpt_path={best}"]
    plain = evaluate(compose_cfg("eval", overrides, tmp_path / "a", tmp_path / "c"))
    flip = evaluate(compose_cfg("eval", [*overrides, "tta=flip"], tmp_path / "b", tmp_path / "c"))
    assert metrics["test/loss"] == pytest.approx(flip["test/loss"], rel=1e-5)
    assert metrics["test/loss"] != pytest.approx(plain["test/loss"], rel=1e-6)
