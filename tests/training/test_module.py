import lightning as L
import pytest
import torch

from product_cnn.data.datamodule import ProductDataModule
from product_cnn.training.module import ProductClassifier


@pytest.fixture
def small(tree_factory):
    root = tree_factory({"Bags": 10, "Cups": 10, "Pens": 10})
    dm = ProductDataModule(str(root), image_size=32, batch_size=8)
    dm.setup("fit")
    return dm, ProductClassifier(class_names=dm.class_names, image_size=32)


def _trainer(**kw) -> L.Trainer:
    kw = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False,
          "enable_progress_bar": False, "enable_model_summary": False, **kw}
    return L.Trainer(**kw)


def test_class_names_set_num_classes_and_keras_adam():
    model = ProductClassifier(class_names=["a", "b", "c"], image_size=32)
    assert model.hparams.num_classes == 3 and model.class_names == ["a", "b", "c"]
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.defaults["lr"] == 1e-3 and optimizer.defaults["eps"] == 1e-7


def test_predict_step_returns_probabilities():
    model = ProductClassifier(num_classes=4, image_size=32).eval()
    probs = model.predict_step((torch.rand(3, 3, 32, 32), torch.zeros(3)), 0)
    assert probs.shape == (3, 4)
    assert torch.allclose(probs.sum(dim=1), torch.ones(3)) and (probs >= 0).all()


def test_sanity_check_does_not_leak_into_validation_metrics(small):
    dm, model = small
    L.seed_everything(0)
    trainer = _trainer(max_epochs=1, num_sanity_val_steps=2)
    trainer.fit(model, datamodule=dm)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    # same weights, no sanity check: a clean validation pass must agree exactly
    clean = _trainer().validate(model, datamodule=dm, verbose=False)[0]
    assert logged == pytest.approx(clean, abs=1e-6)
    assert set(logged) == {"val/loss", "val/acc", "val/f1"}
    assert {"train/loss", "train/acc", "train/f1"} <= set(trainer.callback_metrics)


def test_metrics_match_a_manual_computation(small):
    dm, model = small
    L.seed_everything(0)
    _trainer(max_epochs=2, num_sanity_val_steps=0).fit(model, datamodule=dm)
    result = _trainer().test(model, datamodule=dm, verbose=False)[0]
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels, *_ in dm.test_dataloader():
            images, labels = dm.on_after_batch_transfer((images, labels), 0)
            correct += (model(images).argmax(1) == labels).sum().item()
            total += len(labels)
    assert result["test/acc"] == pytest.approx(correct / total)


@pytest.mark.parametrize("option", ["channels_last", "compile"])
def test_speed_options_give_the_same_outputs(option):
    torch.manual_seed(0)
    plain = ProductClassifier(num_classes=3, image_size=32).eval()
    fast = ProductClassifier(num_classes=3, image_size=32, **{option: True}).eval()
    fast.load_state_dict(plain.state_dict())
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), atol=1e-5, rtol=1e-4)


def test_batched_metric_updates_equal_per_step_updates(small, monkeypatch):
    """Metrics are added every METRIC_FLUSH_STEPS steps (one GPU sync each): same values."""
    dm, model = small
    dm.hparams.batch_size = 2  # several steps per split, the last one short where the count is odd
    results = {}
    for every in (1, 2, 50):
        monkeypatch.setattr(ProductClassifier, "METRIC_FLUSH_STEPS", every)
        val = _trainer().validate(model, datamodule=dm, verbose=False)[0]
        confusion = model.record.val_confusion
        test = _trainer().test(model, datamodule=dm, verbose=False)[0]
        results[every] = (val, confusion, test, model.record.test_report)
    first = results[1]
    assert first[1].sum() == len(dm.split_samples["val"])
    assert first[3]["confmat"].sum() == len(dm.split_samples["test"])
    for every in (2, 50):
        val, confusion, test, report = results[every]
        assert val == pytest.approx(first[0], abs=1e-6) and test == pytest.approx(first[2], abs=1e-6)
        assert torch.equal(confusion, first[1])
        assert all(torch.allclose(report[k], first[3][k]) for k in report)
