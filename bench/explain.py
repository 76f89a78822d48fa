"""What a heatmap costs: Grad-CAM (predict.py explain=true) against a plain forward pass, batch 1.

    python bench/explain.py [CHECKPOINT ...] [--repeats 20]

For each checkpoint (and, always, the Keras mirror at 256 px with untrained weights: the cost does
not depend on them), alternately: ``Predictor.probabilities`` on one photo (PyTorch, fp32, BatchNorm
folded: what predict.py runs with explain=true) and ``Explainer.maps`` on the same photo. Prints
the median of each and their ratio (the goal: at most 2x a plain forward).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py

from common import machine

from product_cnn.data.images import image_hw
from product_cnn.inference.explain import Explainer
from product_cnn.inference.predictor import Predictor
from product_cnn.models.networks import build_network


def timed(fn, repeats: int) -> float:
    """The median seconds of ``fn()`` after two warm-up calls."""
    fn(), fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name: str, predictor: Predictor, repeats: int) -> None:
    photo = torch.randint(0, 256, (1, 3, *image_hw(predictor.image_size)), dtype=torch.uint8)
    explainer = Explainer(predictor.explain_net, image_hw(predictor.image_size))
    forward = timed(lambda: predictor.probabilities(photo), repeats)
    cam = timed(lambda: explainer.maps(photo, [0]), repeats)
    print(f"{name}: forward {forward * 1000:.1f} ms, Grad-CAM {cam * 1000:.1f} ms a photo: "
          f"{cam / forward:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="*", type=Path)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    torch.manual_seed(0)
    mirror = Predictor(build_network("keras_cnn", 5, 256), [str(i) for i in range(5)], image_size=256,
                       device="cpu")
    measure("the mirror, 256 px", mirror, args.repeats)
    for ckpt in args.checkpoints:
        measure(str(ckpt), Predictor.from_checkpoint(ckpt, device="cpu", precision="32"), args.repeats)


if __name__ == "__main__":
    main()
