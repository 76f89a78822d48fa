"""Fine-tuning options of pretrained networks: discriminative learning rates, frozen BatchNorm, LP-FT."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from product_cnn.errors import ProductCNNError
from product_cnn.tasks import train
from product_cnn.training.module import ProductClassifier

ARCH = "mobilenetv3_small_050"  # a small timm network: seconds per epoch at 32 px
TINY = ["model.arch=" + ARCH, "data.image_size=32", "trainer.max_epochs=1"]


def _backbone_bn_stats(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith("net.backbone.") and k.endswith("running_mean")}


def test_backbone_lr_ratio_puts_the_backbone_in_a_group_of_its_own():
    model = ProductClassifier(num_classes=3, image_size=32, arch=ARCH, backbone_lr_ratio=0.1,
                              optimizer={"_target_": "torch.optim.AdamW", "lr": 1e-3})
    groups = model._param_groups()
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    lrs = [g["lr"] for g in optimizer.param_groups]
    assert lrs == pytest.approx([1e-3, 1e-4])
    backbone = {id(p) for p in model.net.backbone.parameters()}
    assert {id(p) for p in optimizer.param_groups[1]["params"]} == backbone
    assert not backbone & {id(p) for p in optimizer.param_groups[0]["params"]}
    with pytest.raises(ProductCNNError, match="backbone_lr_ratio"):
        ProductClassifier(num_classes=3, arch=ARCH, backbone_lr_ratio=0)


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_bn_keeps_the_backbone_statistics_through_training(freeze, train_cfg, tree_factory):
    root = tree_factory({"Bags": 6, "Cups": 6, "Pens": 6})
    cfg = train_cfg("data=folder", f"data.root={root}", *TINY, f"model.freeze_bn={str(freeze).lower()}",
                    "test=false")
    start = _backbone_bn_stats(ProductClassifier(num_classes=3, image_size=32, arch=ARCH).state_dict())
    torch.manual_seed(0)
    train(cfg)
    last = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    after = _backbone_bn_stats(last["state_dict"])
    # a fresh network's statistics are zeros; an epoch of training (or the per-epoch BatchNorm
    # callback) changes them unless they are frozen
    same = all(torch.equal(after[k], start[k]) for k in start)
    assert same == freeze


def test_lp_ft_starts_the_fine_tune_from_the_fitted_head(train_cfg, tree_factory, caplog):
    root = tree_factory({"Bags": 6, "Cups": 6, "Pens": 6})
    cfg = train_cfg("data=folder", f"data.root={root}", *TINY, "model.pretrained=false",
                    "probe={c: 1.0, finetune: true}", "test=false")
    with caplog.at_level("INFO", logger="product_cnn.training.probe"):
        train(cfg)
    assert any(r.getMessage().startswith("Probe: features of") for r in caplog.records)
    ckpts = sorted(p.name for p in (Path(cfg.paths.output_dir) / "checkpoints").glob("*.ckpt"))
    assert "probe.ckpt" not in ckpts and "last.ckpt" in ckpts  # it went on to train epochs
