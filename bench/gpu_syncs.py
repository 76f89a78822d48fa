"""Where the project's training step waits for the GPU (CUDA only).

    python bench/gpu_syncs.py --steps 60

A GPU that finishes a step faster than Python can queue the next one is kept busy only if the
host never waits for it. This trains the project's LightningModule (Lightning Trainer, the
default callbacks that run every step) on a fixed batch with
``torch.cuda.set_sync_debug_mode("warn")`` after a few warm-up steps, and prints each place
that synchronised, with how many times it did so per training step.
"""

from __future__ import annotations

import argparse
import collections
import traceback
import warnings

import lightning as L
import torch
from common import fixed_batch, quiet_lightning
from throughput import FixedBatchData, trainer

from product_cnn.training.module import ProductClassifier


class SyncWatch(L.Callback):
    """Turn CUDA sync warnings on after ``warmup`` steps; record the Python stack of each."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.sites: collections.Counter[str] = collections.Counter()
        self.steps = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn")
        if batch_idx >= self.warmup:
            self.steps += 1

    def on_train_end(self, trainer, pl_module) -> None:
        torch.cuda.set_sync_debug_mode(0)

    def record(self, message, category, filename, lineno, file=None, line=None) -> None:
        if "synchronizing" not in str(message):
            return
        frames = [f for f in traceback.extract_stack()[:-1]
                  if "/warnings.py" not in f.filename and "gpu_syncs.py" not in f.filename]
        ours = [f for f in frames if "product_cnn" in f.filename or "/bench/" in f.filename]
        site = (ours or frames)[-1]
        last = frames[-1]
        self.sites[f"{site.filename}:{site.lineno} ({site.line}) -> {last.filename}:{last.lineno}"] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_syncs.py needs a CUDA GPU")
    device = torch.device("cuda")
    images, labels = fixed_batch(32)
    watch = SyncWatch(args.warmup)
    model = ProductClassifier(num_classes=5, channels_last=True)
    total = args.warmup + args.steps
    with warnings.catch_warnings(), quiet_lightning():
        warnings.simplefilter("always")
        warnings.showwarning = watch.record
        trainer(device, args.bf16, watch, max_steps=total, max_epochs=1, limit_val_batches=0).fit(
            model, datamodule=FixedBatchData(images.to(device), labels.to(device), total))
    print(f"GPU syncs in {watch.steps} training steps (after {args.warmup} warm-up steps):")
    for site, count in watch.sites.most_common():
        print(f"  {count / watch.steps:6.2f} per step  {site}")
    if not watch.sites:
        print("  none")


if __name__ == "__main__":
    main()
