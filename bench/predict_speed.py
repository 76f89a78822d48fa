"""predict.py's path end to end on a folder of photos: images/s and where the time goes.

    python bench/predict_speed.py --ckpt best.ckpt [--photos ../shared/data/slash5]
                                  [--batch-sizes 1,8,32] [--workers 0,1]

For each batch size and DataLoader worker count, ``Predictor.predict`` over every photo of the
folder (reading, decoding, resizing, the network, the answers): images/s, median of
``--repeats`` runs. Then the parts, one after the other on the same photos: decoding alone
(``load_image``, the one image-reading path, over every file) and the network alone on the
decoded tensors at each batch size, so that "decoding share" = decoding time / end-to-end time
(with 0 workers, where nothing overlaps).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from common import SLASH5, machine, median_spread, photo_files

from product_cnn.data.images import load_image
from product_cnn.inference.predictor import Predictor
from product_cnn.runtime import tune_malloc


def timed(fn, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        fn()
        times.append(time.perf_counter() - begin)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--photos", type=Path, default=SLASH5)
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--workers", default="0,1")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tune_malloc()  # as predict.py does
    images = photo_files(args.photos)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    workers = [int(w) for w in args.workers.split(",")]
    print(f"# {machine()}; {len(images)} photos from {args.photos}; checkpoint {args.ckpt.name}", flush=True)

    predictor = Predictor.from_checkpoint(args.ckpt, device="cpu")
    predictor.predict(images[:16])  # warm-up: allocator, oneDNN kernels, file cache
    decode = timed(lambda: [load_image(p, predictor.image_size) for p in images], args.repeats)
    decode_s = statistics.median(decode)
    decoded = [load_image(p, predictor.image_size) for p in images]
    print(f"decoding alone: {median_spread([len(images) / t for t in decode])} img/s "
          f"({1000 * decode_s / len(images):.1f} ms per photo)")
    print(f"{'batch':>5} {'workers':>7} {'end to end img/s':>22} {'network alone img/s':>22} "
          f"{'decoding share':>14}")
    for batch in sizes:
        stacked = [torch.stack(decoded[i:i + batch]) for i in range(0, len(decoded), batch)]
        network = timed(lambda stacked=stacked: [predictor.probabilities(b) for b in stacked], args.repeats)
        for count in workers:
            predictor.batch_size, predictor.num_workers = batch, count
            end = timed(lambda: predictor.predict(images), args.repeats)
            share = f"{100 * decode_s / statistics.median(end):.0f}%" if count == 0 else "(overlapped)"
            print(f"{batch:>5} {count:>7} {median_spread([len(images) / t for t in end]):>22} "
                  f"{median_spread([len(images) / t for t in network]):>22} {share:>14}", flush=True)


if __name__ == "__main__":
    main()
