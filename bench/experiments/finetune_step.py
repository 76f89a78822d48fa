"""A fine-tuning step of the recommended pretrained network on CPU: where the time goes.

    python bench/experiments/finetune_step.py [--arch tf_efficientnet_lite0] [--size 224] [--batch 32]
                                  [--steps 3] [--repeats 3] [--profile]

Training images/s (forward, label-smoothed cross-entropy, backward, AdamW step: what
``experiment=finetune`` does per batch, BatchNorm frozen as its preset has it) for fp32 and bf16
autocast, NCHW and channels_last, on one fixed batch. ``--profile`` adds the PyTorch profiler's
top operators of the bf16 channels_last step (depthwise convolutions are the usual weak spot).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/common.py

from common import autocast, machine, median_spread, timed_rates

from product_cnn.models.networks import build_network
from product_cnn.runtime import tune_malloc


def step_fn(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, bf16: bool):
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.05)
    device = images.device

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, bf16):
            loss = F.cross_entropy(net(images).float(), labels, label_smoothing=0.1)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="tf_efficientnet_lite0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    tune_malloc()
    print(f"# {machine()}; {args.arch} at {args.size} px, batch {args.batch}", flush=True)
    torch.manual_seed(0)
    images = torch.rand(args.batch, 3, args.size, args.size)
    labels = torch.randint(0, 5, (args.batch,))
    device = images.device
    for bf16 in (False, True):
        for channels_last in (False, True):
            net = build_network(args.arch, 5, args.size).train()
            for m in net.modules():  # freeze_bn: the backbone's statistics stay ImageNet's
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()
            x = images
            if channels_last:
                net.to(memory_format=torch.channels_last)
                x = images.contiguous(memory_format=torch.channels_last)
            rates = timed_rates(step_fn(net, x, labels, bf16), device, args.batch, args.steps,
                                args.repeats, warmup=1)
            print(f"{'bf16' if bf16 else 'fp32':>5} {'channels_last' if channels_last else 'NCHW':>14} "
                  f"{median_spread(rates)} img/s", flush=True)
    if args.profile:
        net = build_network(args.arch, 5, args.size).train().to(memory_format=torch.channels_last)
        x = images.contiguous(memory_format=torch.channels_last)
        step = step_fn(net, x, labels, True)
        step()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
