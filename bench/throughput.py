"""Training and inference throughput: plain PyTorch vs the project's Lightning training.

    python bench/throughput.py                       # everything, CPU (or the GPU if there is one)
    python bench/throughput.py --sections ceiling,plain --variants fp32,channels_last

Sections:
* ceiling:   this machine's float32 and bfloat16 matrix-multiply rate (GFLOP/s).
* plain:     a hand-written loop over the network on one fixed synthetic batch (batch 32 by
             default): training and inference images/s for each variant. The baseline.
* lightning: the project's ProductClassifier under a Lightning Trainer on the same fixed batch
             (metrics, per-epoch BatchNorm statistics callback): what the framework costs.
* slash5:    the project's training on the real photos (../shared/data/slash5): ProductDataModule
             with and without the decoded-image cache, for each DataLoader worker count.

Each number is the median of --repeats timed runs (after warm-up) with the min-max spread.
Training throughput is also shown as a fraction of the matmul ceiling of the precision used,
counting 3 x 1.16 GFLOP per 256x256 image.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import lightning as L
import torch
from common import (
    SLASH5,
    TRAIN_GFLOP,
    StepTimer,
    fixed_batch,
    machine,
    matmul_gflops,
    median_spread,
    plain_loop,
    quiet_lightning,
)
from torch.utils.data import DataLoader, Dataset

from product_cnn.data.datamodule import ProductDataModule
from product_cnn.data.images import to_unit_float
from product_cnn.runtime import tune_malloc
from product_cnn.training.bn_stats import EpochBatchNormStats
from product_cnn.training.module import ProductClassifier

VARIANTS = {  # name: (channels_last, bf16, compile)
    "fp32": (False, False, False),
    "channels_last": (True, False, False),
    "bf16": (False, True, False),
    "channels_last+bf16": (True, True, False),
    "compile": (True, False, True),
    "compile+bf16": (True, True, True),
}


class RepeatedBatch(Dataset):
    """The same uint8 batch ``length`` times (used with ``batch_size=None``)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, length: int) -> None:
        self.images, self.labels, self.length = images, labels, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images, self.labels


class FixedBatchData(L.LightningDataModule):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, length: int) -> None:
        super().__init__()
        self.data = RepeatedBatch(images, labels, length)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=None)

    def on_after_batch_transfer(self, batch, dataloader_idx):  # as ProductDataModule does
        images, labels = batch
        return to_unit_float(images), labels


def trainer(device: torch.device, bf16: bool, timer: StepTimer, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator=device.type, devices=1, precision="bf16-mixed" if bf16 else "32-true",
        logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[timer, EpochBatchNormStats()], **kwargs,
    )


def lightning_fixed(device: torch.device, images: torch.Tensor, labels: torch.Tensor, *,
                    channels_last: bool, bf16: bool, compile: bool, steps: int, repeats: int,
                    warmup: int) -> list[float]:
    """Training img/s of the project's LightningModule on the plain loop's fixed batch.

    The batch sits in device memory, as in the plain loop; the time is taken (after a GPU sync)
    every ``steps`` batches only, as the plain loop does.
    """
    torch.manual_seed(0)
    model = ProductClassifier(num_classes=5, image_size=images.shape[-1],
                              channels_last=channels_last, compile=compile)
    total = (warmup + repeats + 1) * steps
    timer = StepTimer(every=steps)
    with quiet_lightning():
        trainer(device, bf16, timer, max_steps=total, max_epochs=1, limit_val_batches=0).fit(
            model, datamodule=FixedBatchData(images.to(device), labels.to(device), total))
    return timer.rates(len(images), skip=warmup + 1)[:repeats]


def lightning_slash5(device: torch.device, root: Path, cache_dir: str, *, cache: bool,
                     workers: int, variant: tuple[bool, bool, bool], repeats: int,
                     batch: int) -> tuple[list[float], int]:
    """Training img/s of whole epochs 2.. on the real photos (data loading included)."""
    channels_last, bf16, compile = variant
    L.seed_everything(0, verbose=False)
    data = ProductDataModule(str(root), batch_size=batch, num_workers=workers, cache=cache,
                             cache_dir=cache_dir, pin_memory=device.type == "cuda")
    data.prepare_data()
    data.setup("fit")
    model = ProductClassifier(class_names=data.class_names, channels_last=channels_last,
                              compile=compile)
    timer = StepTimer()
    with quiet_lightning():
        trainer(device, bf16, timer, max_epochs=1 + repeats, limit_val_batches=0).fit(
            model, datamodule=data)
    n = len(data.split_samples["train"])
    return [n / t for t in timer.train_epochs[1:]], n


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="ceiling,plain,lightning,slash5")
    parser.add_argument("--variants", default="fp32,channels_last,bf16,channels_last+bf16,compile",
                        help=f"any of {','.join(VARIANTS)}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="batches per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--slash5", type=Path, default=SLASH5)
    parser.add_argument("--workers", default="0,2", help="DataLoader workers to try on slash5")
    parser.add_argument("--slash5-variant", default="channels_last", choices=list(VARIANTS))
    parser.add_argument("--no-tune-malloc", action="store_true", help="keep glibc's default malloc")
    args = parser.parse_args()

    if not args.no_tune_malloc:
        tune_malloc()
    device = torch.device(args.device)
    sections = set(args.sections.split(","))
    variants = args.variants.split(",")
    print(f"# {machine()}; device {device}; batch {args.batch_size}; "
          f"malloc tuned: {not args.no_tune_malloc}", flush=True)

    ceiling = {}
    if "ceiling" in sections:
        ceiling = {"fp32": matmul_gflops(device, torch.float32),
                   "bf16": matmul_gflops(device, torch.bfloat16)}
        for name, gflops in ceiling.items():
            print(f"matmul {name}: {gflops:8.1f} GFLOP/s = {gflops / TRAIN_GFLOP:6.1f} training img/s "
                  f"at 100% of it", flush=True)

    def share(rates: list[float], bf16: bool) -> str:
        peak = ceiling.get("bf16" if bf16 else "fp32")
        return f"{100 * statistics.median(rates) * TRAIN_GFLOP / peak:5.1f}%" if peak else "   -"

    images, labels = fixed_batch(args.batch_size)
    timing = dict(steps=args.steps, repeats=args.repeats, warmup=args.warmup)
    plain: dict[str, list[float]] = {}
    print(f"\n{'setup':34} {'train img/s (spread)':>24} {'of ceiling':>10} {'infer img/s (spread)':>24}")
    for name in variants:
        channels_last, bf16, compile = VARIANTS[name]
        options = dict(channels_last=channels_last, bf16=bf16, compile=compile)
        if "plain" in sections:
            train, infer = plain_loop(device, images, labels, **options, **timing)
            plain[name] = train
            print(f"{'plain PyTorch ' + name:34} {median_spread(train):>24} {share(train, bf16):>10} "
                  f"{median_spread(infer):>24}", flush=True)
        if "lightning" in sections:
            train = lightning_fixed(device, images, labels, **options, **timing)
            ratio = ""
            if name in plain:
                ratio = f"  ({statistics.median(train) / statistics.median(plain[name]):.2f} x plain)"
            print(f"{'Lightning ' + name:34} {median_spread(train):>24} {share(train, bf16):>10}{ratio}",
                  flush=True)

    if "slash5" in sections:
        if not args.slash5.is_dir():
            print(f"\nslash5: skipped, no photos at {args.slash5}")
            return
        variant = VARIANTS[args.slash5_variant]
        print(f"\nslash5 training epochs 2..{args.repeats + 1} ({args.slash5_variant}), "
              "decoding and loading included:")
        with tempfile.TemporaryDirectory() as cache_dir:
            for workers in [int(w) for w in args.workers.split(",")]:
                for cache in (True, False):
                    rates, n = lightning_slash5(device, args.slash5, cache_dir, cache=cache,
                                                workers=workers, variant=variant,
                                                repeats=args.repeats, batch=args.batch_size)
                    label = f"cache {'on ' if cache else 'off'}, {workers} workers ({n} photos)"
                    print(f"{'Lightning ' + label:50} {median_spread(rates):>24} img/s "
                          f"{share(rates, variant[1]):>8}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
