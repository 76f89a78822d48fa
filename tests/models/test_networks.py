"""torchvision and timm architectures in the same pipeline: train, resume, eval, predict, export, weights."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models import get_model

from product_cnn.errors import CheckpointError, ProductCNNError
from product_cnn.inference.predictor import Predictor
from product_cnn.models.networks import TORCHVISION, build_network
from product_cnn.tasks import evaluate, train
from tests.helpers import CONF_DIR, NO_SAME_PHOTO, compose_cfg

ONE_BATCH = ["trainer.max_epochs=1", "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=1",
             "data.image_size=32"]


# 30-45 s each on 2 cores: -m slow (the default suite keeps resnet18 and the recommended Lite0)
HEAVY = {"convnext_tiny", "efficientnet_b0", "mobilenet_v3_large", "mobilenet_v3_small",
         "mobilenetv3_small_050"}


TIMM = ("tf_efficientnet_lite0", "mobilenetv3_small_050")  # a Lite one and another small timm network
ARCHS = [pytest.param(a, marks=pytest.mark.slow) if a in HEAVY else a for a in (*TORCHVISION, *TIMM)]


@pytest.mark.parametrize("arch", ARCHS)
def test_each_architecture_trains_evaluates_predicts_and_exports(arch, train_cfg, tree_factory, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from product_cnn.inference.export import export

    root = tree_factory({"Bags": 6, "Cups": 6, "Pens": 6})
    preset = (CONF_DIR / "model" / f"{arch}.yaml").is_file()  # else any timm name through model.arch
    cfg = train_cfg(f"model={arch}" if preset else f"model.arch={arch}", "data=folder", f"data.root={root}",
                    *ONE_BATCH)
    metrics = train(cfg)
    assert np.isfinite(metrics["train/loss"]) and 0 <= metrics["test/acc"] <= 1
    best = next(Path(cfg.paths.output_dir, "checkpoints").glob("epoch_*.ckpt"))
    saved = torch.load(best, weights_only=True)
    assert saved["hyper_parameters"]["arch"] == arch
    assert saved["state_dict"]["net.head.weight"].shape[0] == 3  # our classes
    assert not any(k.startswith("net.normalize") for k in saved["state_dict"])  # constants, not weights

    result = evaluate(compose_cfg("eval", ["trainer.accelerator=cpu", f"ckpt_path={best}"], tmp_path / "e",
                                  tmp_path / "cache"))
    assert result["test/acc"] == pytest.approx(metrics["test/acc"])
    predictor = Predictor.from_checkpoint(best, device="cpu")
    photo = sorted((root / "Cups").glob("*.jpg"))[0]
    prediction = predictor.predict(photo)[0]
    assert prediction.ok and prediction.category in {"Bags", "Cups", "Pens"}

    batch = torch.rand(2, 3, 32, 32)
    reference = predictor.probabilities(batch).numpy()
    onnx = export(best, "onnx", tmp_path / "m.onnx")
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": batch.numpy()})[0]
    assert np.abs(got - reference).max() < 1e-4
    script = torch.jit.load(str(export(best, "torchscript", tmp_path / "m.pt")))
    assert np.abs(script(batch)[0].detach().numpy() - reference).max() < 1e-4


def test_resuming_with_another_architecture_is_refused_in_one_line(train_cfg, tree_factory, tmp_path):
    root = tree_factory({"Bags": 6, "Cups": 6})
    cfg = train_cfg("model=mobilenet_v3_small", "data=folder", f"data.root={root}", *ONE_BATCH, "test=false")
    train(cfg)
    last = Path(cfg.paths.output_dir, "checkpoints", "last.ckpt")
    other = compose_cfg("train", ["trainer.accelerator=cpu", "data=folder", f"data.root={root}",
                                  NO_SAME_PHOTO, *ONE_BATCH, "model=resnet18", f"ckpt_path={last}"],
                        tmp_path / "again", tmp_path / "c")
    with pytest.raises(CheckpointError, match=r"is a mobilenet_v3_small network, not resnet18"):
        train(other)


@pytest.fixture
def no_network(monkeypatch):
    """Any download attempt fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_weights_path_loads_the_backbone_and_replaces_the_head(tmp_path, no_network):
    torch.manual_seed(3)
    source = get_model("resnet18", weights=None)  # torchvision's key layout, 1000 classes
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    net = build_network("resnet18", num_classes=4, weights_path=str(path))
    for name, tensor in source.state_dict().items():
        if not name.startswith("fc."):
            assert torch.equal(net.backbone.state_dict()[name], tensor), name
    assert net.head.out_features == 4 and net.head.in_features == source.fc.in_features
    source.fc = torch.nn.Identity()  # the same features come out of our backbone
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(net.eval().backbone(x), source.eval()(x))


def test_weights_of_another_architecture_fail_in_one_line(tmp_path, no_network):
    path = tmp_path / "mobilenet.pth"
    torch.save(get_model("mobilenet_v3_small", weights=None).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"does not fit torchvision's resnet18: missing conv1.weight") \
            as info:
        build_network("resnet18", num_classes=3, weights_path=str(path))
    assert "\n" not in str(info.value)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read as a state dict"):
        build_network("resnet18", num_classes=3, weights_path=str(tmp_path / "junk.pth"))


def test_pretrained_offline_says_which_file_to_put_where(monkeypatch, tmp_path):
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(ProductCNNError, match=r"put it at .*hub/checkpoints/resnet18-[0-9a-f]+\.pth") as info:
        build_network("resnet18", num_classes=3, pretrained=True)
    assert "\n" not in str(info.value)


def test_a_pretrained_checkpoint_loads_without_its_weights_file(train_cfg, tree_factory, tmp_path,
                                                                no_network):
    """Evaluating or predicting never needs the original weights again: they are in the checkpoint."""
    path = tmp_path / "w.pth"
    torch.save(get_model("mobilenet_v3_small", weights=None).state_dict(), path)
    root = tree_factory({"Bags": 6, "Cups": 6})
    cfg = train_cfg("model=mobilenet_v3_small", f"model.weights_path={path}", "data=folder",
                    f"data.root={root}", *ONE_BATCH, "test=false")
    train(cfg)
    path.unlink()
    last = Path(cfg.paths.output_dir, "checkpoints", "last.ckpt")
    assert Predictor.from_checkpoint(last, device="cpu").predict(next(root.rglob("*.jpg")))[0].ok


def test_the_mirror_has_no_pretrained_weights():
    with pytest.raises(ProductCNNError, match="has no pretrained weights"):
        build_network("keras_cnn", pretrained=True)
    with pytest.raises(ProductCNNError, match="unknown architecture 'vgg99'"):
        build_network("vgg99")


def test_finetuning_freezes_then_unfreezes_the_backbone(train_cfg, tree_factory, tmp_path, no_network):
    path = tmp_path / "w.pth"
    torch.save(get_model("mobilenet_v3_small", weights=None).state_dict(), path)
    before = {k: v.clone() for k, v in torch.load(path, weights_only=True).items()}
    root = tree_factory({"Bags": 6, "Cups": 6})
    cfg = train_cfg("model=mobilenet_v3_small", f"model.weights_path={path}", "callbacks=finetune",
                    "callbacks.backbone_finetuning.unfreeze_backbone_at_epoch=1",
                    "callbacks.rich_progress_bar=null", "callbacks.model_summary=null",
                    "callbacks.model_checkpoint.save_top_k=-1", "data=folder", f"data.root={root}",
                    "data.image_size=32", "trainer.max_epochs=2", "test=false")
    train(cfg)
    checkpoints = Path(cfg.paths.output_dir, "checkpoints")
    conv, head = "net.backbone.features.0.0.weight", "net.head.weight"
    first, second = (torch.load(checkpoints / f"epoch_00{e}.ckpt", weights_only=True)["state_dict"]
                     for e in (0, 1))
    assert torch.equal(first[conv], before["features.0.0.weight"])  # epoch 1: backbone frozen...
    assert not torch.equal(first[head], second[head])  # ...while the head trains
    assert not torch.equal(second[conv], first[conv])  # epoch 2: the backbone trains too
