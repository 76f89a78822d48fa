"""The mirror's first block in training: the layers as they are vs product_cnn/models/fused_block.py.

    python bench/experiments/fused_block.py [--batch-size 32] [--repeats 7] [--sections block,net]

Sections:
* block: conv 6x6 -> ReLU -> BatchNorm -> 2x2 max-pool on a 256x256 batch, forward plus
         backward, in float32 and bf16 autocast, channels_last on and off: images/s of the
         ordinary layers and of the fused function, timed alternately, and the bytes each keeps
         for the backward pass.
* net:   the whole network's training step (plain loop, Adam) with the fused block on and off,
         float32 and bf16, channels_last.

Each number is the median of --repeats timed runs (after warm-up), min-max in brackets.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/common.py

from common import autocast, fixed_batch, machine, median_spread, plain_loop
from torch import nn

from product_cnn.models.fused_block import relu_batchnorm_maxpool
from product_cnn.models.mirror import KERAS_BN_EPS, KERAS_BN_MOMENTUM
from product_cnn.runtime import tune_malloc


def block_rates(batch: int, bf16: bool, channels_last: bool,
                repeats: int) -> dict[str, tuple[list[float], int]]:
    """{"layers" | "fused": (images/s of each run, bytes saved for backward)}."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    conv = nn.Conv2d(3, 64, 6).to(memory_format=fmt)
    bn = nn.BatchNorm2d(64, eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM)
    x = torch.rand(batch, 3, 256, 256).contiguous(memory_format=fmt)
    grad = torch.randn(batch, 64, 125, 125).contiguous(memory_format=fmt)
    ways = {"layers": lambda c: F.max_pool2d(bn(F.relu_(c)), 2),
            "fused": lambda c: relu_batchnorm_maxpool(c, bn)}
    saved = {}
    rates: dict[str, list[float]] = {name: [] for name in ways}

    def step(name: str) -> None:
        sizes = []

        def pack(t: torch.Tensor) -> torch.Tensor:
            sizes.append((t.data_ptr(), t.untyped_storage().nbytes()))
            return t

        with autocast(torch.device("cpu"), bf16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = ways[name](conv(x))
        out.backward(grad.to(out.dtype))
        conv.weight.grad = conv.bias.grad = bn.weight.grad = bn.bias.grad = None
        saved[name] = sum(dict(sizes).values())  # each storage once

    for name in ways:  # warm-up
        step(name)
    for _ in range(repeats):
        for name in ways:  # alternately, so that a busy moment hits both
            start = time.perf_counter()
            step(name)
            rates[name].append(batch / (time.perf_counter() - start))
    return {name: (rates[name], saved[name]) for name in ways}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sections", default="block,net")
    args = parser.parse_args()
    tune_malloc()
    sections = args.sections.split(",")
    print(f"# {machine()}; batch {args.batch_size}\n")
    if "block" in sections:
        print(f"{'first block, fwd+bwd':34} {'layers img/s':>20} {'fused img/s':>20} {'speed-up':>9}"
              f" {'saved MB layers -> fused':>26}")
        for bf16 in (False, True):
            for channels_last in (True, False):
                res = block_rates(args.batch_size, bf16, channels_last, args.repeats)
                (lr, lb), (fr, fb) = res["layers"], res["fused"]
                name = f"{'bf16' if bf16 else 'float32'} {'channels_last' if channels_last else 'NCHW'}"
                ratio = sorted(fr)[len(fr) // 2] / sorted(lr)[len(lr) // 2]
                print(f"{name:34} {median_spread(lr):>20} {median_spread(fr):>20} {ratio:>8.2f}x"
                      f" {lb / 2**20:>12.0f} -> {fb / 2**20:.0f}")
        print()
    if "net" in sections:
        images, labels = fixed_batch(args.batch_size)
        print(f"{'whole network, training step':34} {'layers img/s':>20} {'fused img/s':>20} {'speed-up':>9}")
        for bf16 in (False, True):
            rates: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(args.repeats):  # alternately, one timed run each
                for fused in (False, True):
                    train, _ = plain_loop(torch.device("cpu"), images, labels, channels_last=True, bf16=bf16,
                                          compile=False, steps=3, repeats=1, warmup=1, fused=fused)
                    rates[fused] += train
            ratio = sorted(rates[True])[args.repeats // 2] / sorted(rates[False])[args.repeats // 2]
            print(f"{('bf16' if bf16 else 'float32') + ' channels_last':34} {median_spread(rates[False]):>20}"
                  f" {median_spread(rates[True]):>20} {ratio:>8.2f}x")


if __name__ == "__main__":
    main()
