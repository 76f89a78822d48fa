"""Compare BatchNorm running-statistics schemes on the same data, seed and weights.

    python bench/experiments/bn_stats.py --root ~/.cache/product-cnn/demo-v4 --size 128 --epochs 50

Trains the Keras-mirror network with a plain PyTorch loop (images decoded once into memory,
Adam lr 1e-3 eps 1e-7, batch 32) once per scheme and prints validation accuracy every few
epochs and the final test accuracy:

* keras:   Keras' momentum (0.99) only, as in experiment=original
* epoch:   EpochBatchNormStats: statistics reset each epoch, averaged over its batches (default)
* precise: after each epoch, statistics re-estimated by an extra pass over the training set
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from product_cnn.data.cache import default_cache_dir
from product_cnn.data.datamodule import ProductDataModule
from product_cnn.data.demo import default_demo_root
from product_cnn.models.mirror import KERAS_BN_MOMENTUM, KerasCNN
from product_cnn.runtime import tune_malloc
from product_cnn.training.bn_stats import batchnorm_layers


def decode(dm: ProductDataModule, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = dm.dataset(split)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    return images, torch.tensor([label for _, label in dataset.samples])


def accuracy(model: KerasCNN, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    model.eval()
    images, labels = data
    with torch.no_grad():
        chunks = [images[i:i + 64].float() / 255 for i in range(0, len(images), 64)]
        preds = torch.cat([model(chunk).argmax(1) for chunk in chunks])
    return (preds == labels).float().mean().item()


def train(scheme: str, data: dict, size: int, epochs: int, seed: int) -> tuple[list[float], float]:
    torch.manual_seed(seed)
    model = KerasCNN(num_classes=int(data["train"][1].max()) + 1, image_size=size)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    images, labels = data["train"]
    history = []
    for _ in range(epochs):
        if scheme == "epoch":
            for bn in batchnorm_layers(model):
                bn.reset_running_stats()
                bn.momentum = None
        model.train()
        order = torch.randperm(len(images))
        batches = [order[i:i + 32] for i in range(0, len(order), 32) if len(order[i:i + 32]) > 1]
        for idx in batches:
            loss = F.cross_entropy(model(images[idx].float() / 255), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if scheme == "precise":
            for bn in batchnorm_layers(model):
                bn.reset_running_stats()
                bn.momentum = None
            with torch.no_grad():
                for idx in batches:
                    model(images[idx].float() / 255)
            for bn in batchnorm_layers(model):
                bn.momentum = KERAS_BN_MOMENTUM
        history.append(accuracy(model, data["val"]))
    return history, accuracy(model, data["test"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=default_demo_root(default_cache_dir()))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--schemes", default="keras,epoch,precise")
    args = parser.parse_args()
    tune_malloc()
    dm = ProductDataModule(str(args.root), image_size=args.size)
    dm.setup("fit")
    data = {split: decode(dm, split) for split in ("train", "val", "test")}
    every = max(1, args.epochs // 10)
    print(f"{args.root}  {args.size}x{args.size}  {args.epochs} epochs  seed {args.seed}")
    print(f"{'scheme':<8} val acc at epochs {', '.join(str(e) for e in range(every, args.epochs + 1, every))}"
          "  | final test acc")
    for scheme in args.schemes.split(","):
        history, test = train(scheme, data, args.size, args.epochs, args.seed)
        shown = " ".join(f"{history[e - 1]:.2f}" for e in range(every, args.epochs + 1, every))
        print(f"{scheme:<8} {shown}  | {test:.3f}", flush=True)


if __name__ == "__main__":
    main()
