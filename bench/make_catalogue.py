"""A 20,000-photo catalogue for the streaming benchmarks: every slash5 photo repeated ``--copies``
times, each copy a distinct random crop (80-100% of each side), flip and colour change of the
original, saved as JPEG (quality 90) at the original's size. Prints what it wrote.

    python bench/make_catalogue.py --out /tmp/catalogue --copies 42    # 477 x 42 = 20,034 photos
"""

from __future__ import annotations

import argparse
import os
import random
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from common import SLASH5
from PIL import Image, ImageEnhance, ImageOps


def _copies(job: tuple[str, str, int, int]) -> int:
    source, target_dir, copies, seed = job
    with Image.open(source) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    os.makedirs(target_dir, exist_ok=True)
    written = 0
    for k in range(copies):
        rng = random.Random(f"{seed}:{source}:{k}")
        w, h = image.size
        cw, ch = int(w * rng.uniform(0.8, 1.0)), int(h * rng.uniform(0.8, 1.0))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        copy = image.crop((x, y, x + cw, y + ch)).resize((w, h), Image.BILINEAR)
        if rng.random() < 0.5:
            copy = ImageOps.mirror(copy)
        copy = ImageEnhance.Brightness(copy).enhance(rng.uniform(0.8, 1.2))
        copy = ImageEnhance.Color(copy).enhance(rng.uniform(0.8, 1.2))
        copy.save(os.path.join(target_dir, f"{Path(source).stem}_{k:02d}.jpg"), quality=90)
        written += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--copies", type=int, default=42)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sources = sorted(p for p in Path(SLASH5).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    jobs = [(str(p), os.path.join(args.out, p.parent.name), args.copies, args.seed) for p in sources]
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        total = sum(pool.map(_copies, jobs, chunksize=4))
    size = sum(f.stat().st_size for f in Path(args.out).rglob("*.jpg"))
    print(f"{total} photos from {len(sources)} originals in {args.out}: {size / total / 1024:.1f} KiB each, "
          f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
