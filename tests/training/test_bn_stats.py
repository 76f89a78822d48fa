import lightning as L
import torch

from product_cnn.data.datamodule import ProductDataModule
from product_cnn.training.bn_stats import EpochBatchNormStats, batchnorm_layers
from product_cnn.training.module import ProductClassifier


def _fit(dm, model, callbacks, epochs=2):
    L.Trainer(
        accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=callbacks,
    ).fit(model, datamodule=dm)


def test_running_stats_are_the_mean_over_the_last_epoch(tree_factory):
    dm = ProductDataModule(str(tree_factory({"Bags": 10, "Cups": 10, "Pens": 10})), image_size=32,
                           batch_size=8)
    dm.setup("fit")
    L.seed_everything(0)
    model = ProductClassifier(class_names=dm.class_names, image_size=32)
    bn = model.net.features[2]
    seen: list[tuple[int, torch.Tensor]] = []
    bn.register_forward_pre_hook(
        lambda m, args: seen.append((model.current_epoch, args[0].mean(dim=(0, 2, 3)).detach()))
        if m.training else None
    )
    _fit(dm, model, [EpochBatchNormStats()])
    last_epoch = [mean for epoch, mean in seen if epoch == 1]
    assert len(last_epoch) == 3  # 21 training images in batches of 8
    assert int(bn.num_batches_tracked) == 3
    assert torch.allclose(bn.running_mean, torch.stack(last_epoch).mean(0), atol=1e-6)


def test_without_the_callback_keras_momentum_is_kept(tree_factory):
    dm = ProductDataModule(str(tree_factory({"Bags": 6, "Cups": 6})), image_size=32, batch_size=4)
    dm.setup("fit")
    model = ProductClassifier(class_names=dm.class_names, image_size=32)
    _fit(dm, model, [], epochs=1)
    assert all(bn.momentum == 0.01 for bn in batchnorm_layers(model))
    assert int(model.net.features[2].num_batches_tracked) == 2  # counted across epochs, never reset
