"""How far apart are a photo and its re-cropped copy, and two different photos, in a backbone's
features? The same-photo threshold (``data.same_photo.threshold``) is chosen on these numbers.

    python bench/same_photo.py [--data-root ../shared/data/slash5] [--arch tf_efficientnet_lite0]

Plants five copies of every third photo in a scratch folder (never next to the photos): cropped to 80%
(off centre), zoomed (the middle 60%, enlarged), padded with black bars (15% each side), rounded
white corners, re-encoded at JPEG quality 35 and half the size. Prints, for thresholds from 0.80 to
0.97: the share of copies whose cosine similarity to their original reaches it (per kind), and how
many of the original photos it would group with another original (pairs, photos, largest group),
beside the difference hash's groups.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py

from common import SLASH5, machine, photo_files

from product_cnn.data.check import duplicate_groups, inspect_images
from product_cnn.data.images import open_image, to_rgb
from product_cnn.data.same_photo import similar_groups
from product_cnn.models.same_photo import SamePhotoFinder


def crop80(im: Image.Image) -> Image.Image:
    w, h = im.size
    return im.crop((int(0.15 * w), int(0.05 * h), int(0.95 * w), int(0.85 * h)))


def zoom(im: Image.Image) -> Image.Image:
    w, h = im.size
    return im.crop((int(0.2 * w), int(0.2 * h), int(0.8 * w), int(0.8 * h))).resize((w, h))


def bars(im: Image.Image) -> Image.Image:
    w, h = im.size
    return ImageOps.expand(im, border=(int(0.15 * w), int(0.15 * h)), fill=(0, 0, 0))


def rounded(im: Image.Image) -> Image.Image:
    w, h = im.size
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).rounded_rectangle((0, 0, w - 1, h - 1), radius=int(0.12 * min(w, h)), fill=255)
    return Image.composite(im, Image.new("RGB", (w, h), (255, 255, 255)), mask)


def reencoded(im: Image.Image) -> Image.Image:
    return im.resize((max(1, im.width // 2), max(1, im.height // 2)))


KINDS = {"crop 80%": crop80, "zoom 60%": zoom, "black bars": bars, "rounded corners": rounded,
         "re-encoded q35 1/2": reencoded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", type=Path, default=SLASH5)
    parser.add_argument("--arch", default="tf_efficientnet_lite0")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    originals = photo_files(args.data_root)
    finder = SamePhotoFinder(args.arch)
    with tempfile.TemporaryDirectory() as scratch:
        copies: dict[str, list[str]] = {k: [] for k in KINDS}
        sampled = originals[::3]
        for i, path in enumerate(sampled):
            with open_image(path) as image:
                rgb = to_rgb(image).copy()
            for kind, make in KINDS.items():
                out = Path(scratch) / f"{i}_{len(copies[kind])}_{kind[:4]}.jpg"
                make(rgb).save(out, quality=35 if kind.startswith("re-") else 90)
                copies[kind].append(str(out))
        start = time.perf_counter()
        base = finder.features(originals, Path(scratch) / "cache")
        planted = {k: finder.features(v, Path(scratch) / "cache") for k, v in copies.items()}
        print(f"{len(originals)} photos, {sum(map(len, copies.values()))} copies; features in "
              f"{time.perf_counter() - start:.0f} s ({args.arch}, {finder.image_size} px)")
        views = base.shape[1]
        hashed = duplicate_groups(inspect_images(originals, Path(scratch) / "checks"))
        print(f"difference hash (Hamming <= 3): {len(hashed)} groups of {sum(map(len, hashed))} photos")
        for kind in KINDS:  # what the hash finds of the copies
            sample = sampled[:120] + copies[kind][:120]
            found = duplicate_groups(inspect_images(sample, Path(scratch) / "c2"))
            pairs = sum(1 for g in found if any(p in copies[kind] for p in g))
            print(f"  hash finds {pairs} of 120 '{kind}' copies")
        print("threshold | " + " | ".join(KINDS) + " | originals grouped (pairs, photos, largest)")
        x = torch.nn.functional.normalize(base, dim=2)
        sims = torch.einsum("asd,btd->abst", x, x).amax(dim=(2, 3))
        sims.fill_diagonal_(-1)

        def pair_sim(f: torch.Tensor) -> torch.Tensor:  # each original with its own copy, best views
            y = torch.nn.functional.normalize(f, dim=2)
            return torch.einsum("nsd,ntd->nst", x[::3], y).amax(dim=(1, 2))

        copy_sims = [pair_sim(f) for f in planted.values()]
        print(f"views: {views} (scales {finder.scales})")
        for t in (0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.96):
            recall = [float((s >= t).float().mean()) for s in copy_sims]
            groups = similar_groups(originals, base, t)
            pairs = int((sims >= t).sum()) // 2
            print(f"{t:.2f} | " + " | ".join(f"{r:.1%}" for r in recall)
                  + f" | {pairs}, {sum(map(len, groups))}, {max(map(len, groups), default=0)}")


if __name__ == "__main__":
    main()
