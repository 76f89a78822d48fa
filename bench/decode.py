"""Decoding photos for the network: full decoding + resize against reduced-scale JPEG decoding.

    python bench/decode.py [--photos ../shared/data/slash5] [--sizes 224,256,128] [--repeats 3]

For each input size: images/s of plain Pillow decoding (open, EXIF orientation, RGB, full decode,
bilinear resize: the project's path before reduced decoding, and what a plain script does), of
``load_array(path, size, decode="full")`` and of ``decode="reduced"`` (the project's one
image-reading path); one thread, every photo of the folder, median of ``--repeats`` passes after
one warm-up pass that fills the file cache. Then the speed-up of reduced over plain, and how far
the reduced pixels are from the full ones (mean absolute difference, 99th and 99.9th percentile
and maximum, in levels of 255).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import SLASH5, machine, median_spread, photo_files
from PIL import Image, ImageOps

from product_cnn.data.images import load_array


def plain(path: str, size: int) -> np.ndarray:
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        return np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=Path, default=SLASH5)
    parser.add_argument("--sizes", default="224,256,128")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    files = photo_files(args.photos)
    print(f"# {machine()}; {len(files)} photos from {args.photos}", flush=True)
    print(f"{'size':>5} {'plain Pillow img/s':>20} {'full img/s':>20} {'reduced img/s':>20} {'speed-up':>8} "
          f"{'mean':>6} {'p99':>5} {'p99.9':>6} {'max':>5}", flush=True)
    for size in (int(s) for s in args.sizes.split(",")):
        rates = {}
        readers = {"plain": lambda f, size=size: plain(f, size),
                   "full": lambda f, size=size: load_array(f, size, decode="full"),
                   "reduced": lambda f, size=size: load_array(f, size, decode="reduced")}
        for name, read in readers.items():
            [read(f) for f in files]  # warm-up: file cache, allocator
            times = []
            for _ in range(args.repeats):
                begin = time.perf_counter()
                [read(f) for f in files]
                times.append(time.perf_counter() - begin)
            rates[name] = [len(files) / t for t in times]
        diff = np.concatenate([np.abs(load_array(f, size).astype(int) - load_array(f, size, decode="full"))
                               .ravel() for f in files])
        speedup = np.median(rates["reduced"]) / np.median(rates["plain"])
        print(f"{size:>5} {median_spread(rates['plain']):>20} {median_spread(rates['full']):>20} "
              f"{median_spread(rates['reduced']):>20} "
              f"{speedup:>7.2f}x {diff.mean():>6.2f} {np.percentile(diff, 99):>5.0f} "
              f"{np.percentile(diff, 99.9):>6.0f} {diff.max():>5}", flush=True)


if __name__ == "__main__":
    main()
