"""The first convolution (6x6, 3 -> 64 channels, 256x256 input) in several formulations.

    python bench/experiments/conv1.py [--batch-size 32] [--repeats 5]

It is 75% of the network's arithmetic, and with only 3 input channels the reduction per output
(108 values) is short, which suits direct-convolution kernels poorly. Compared, forward plus
weight gradient (the input needs no gradient), after a check that they give the same outputs:
* conv NCHW / conv NHWC: nn.functional.conv2d in both memory formats (oneDNN on CPU)
* unfold+matmul: im2col with F.unfold, then one (N*251*251, 108) x (108, 64) matrix multiply
  producing NHWC output directly
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/common.py

from common import machine, median_spread

from product_cnn.runtime import tune_malloc


def conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, w, b)


def unfold_matmul(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    n, _, h, wd = x.shape
    k = w.shape[-1]
    oh, ow = h - k + 1, wd - k + 1
    cols = F.unfold(x, k).transpose(1, 2)  # (N, L, C*k*k)
    out = torch.addmm(b, cols.reshape(-1, cols.shape[-1]), w.reshape(w.shape[0], -1).t())
    return out.view(n, oh, ow, -1).permute(0, 3, 1, 2)  # NCHW view of NHWC memory


def measure(fn, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, repeats: int) -> list[float]:
    rates = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        out = fn(x, w, b)
        out.backward(torch.ones_like(out))
        if i:  # first call is warm-up
            rates.append(len(x) / (time.perf_counter() - start))
        w.grad = b.grad = None
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    tune_malloc()
    torch.manual_seed(0)
    x = torch.rand(args.batch_size, 3, 256, 256)
    w = (torch.randn(64, 3, 6, 6) * 0.1).requires_grad_()
    b = torch.zeros(64, requires_grad=True)
    x_nhwc = x.contiguous(memory_format=torch.channels_last)
    print(f"# {machine()}; conv1 forward + weight gradient, batch {args.batch_size}")
    reference = conv(x[:4], w, b)
    torch.testing.assert_close(unfold_matmul(x[:4], w, b), reference, atol=1e-4, rtol=1e-4)
    for name, fn, inp in (("conv NCHW", conv, x), ("conv NHWC", conv, x_nhwc),
                          ("unfold+matmul", unfold_matmul, x)):
        print(f"{name:16} {median_spread(measure(fn, inp, w, b, args.repeats))} img/s", flush=True)


if __name__ == "__main__":
    main()
