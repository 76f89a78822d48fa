"""Photos that are no product of any shop category, for measuring "none of these".

Real photos that installed packages ship (scikit-image's sample images: people, a cat, a rocket, a
street with a motorcycle, the moon, textures, microscopy, a printed page, text; scikit-learn's two
sample photos; matplotlib's portrait), plus images made here: blank and near-uniform ones, noise,
a screenshot-like page of boxes and text, a document-like page. Package photos that could pass for
a product (scikit-image's coffee cup, clock and coins; matplotlib's gift box) are left out.

    from bench.outside_photos import write_outside_photos   # (repo root on sys.path)
    paths = write_outside_photos(tmp_dir)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SKIMAGE = ["astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "chessboard_RGB.png",
           "color.png", "grass.png", "gravel.png", "horse.png", "hubble_deep_field.jpg", "ihc.png",
           "logo.png", "microaneurysms.png", "moon.png", "motorcycle_left.png", "page.png", "phantom.png",
           "retina.jpg", "rocket.jpg", "text.png"]


def package_photos() -> list[Path]:
    """The sample photos of the installed packages (those not installed are skipped)."""
    found: list[Path] = []
    try:
        import skimage

        folder = Path(os.path.dirname(skimage.__file__)) / "data"
        found += [folder / n for n in SKIMAGE if (folder / n).is_file()]
    except ImportError:
        pass
    try:
        import sklearn.datasets

        folder = Path(os.path.dirname(sklearn.datasets.__file__)) / "images"
        found += [folder / n for n in ("china.jpg", "flower.jpg") if (folder / n).is_file()]
    except ImportError:
        pass
    try:
        import matplotlib

        portrait = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        found += [portrait] if portrait.is_file() else []
    except ImportError:
        pass
    return found


def made_images(seed: int = 0) -> dict[str, Image.Image]:
    """Blank, near-uniform, noise, a screenshot-like and a document-like image."""
    rng = np.random.default_rng(seed)
    images = {
        "blank_white.png": Image.new("RGB", (400, 300), "white"),
        "blank_black.png": Image.new("RGB", (400, 300), "black"),
        "near_uniform_grey.png": Image.fromarray(
            (128 + rng.normal(0, 3, (300, 400, 3))).clip(0, 255).astype(np.uint8)),
        "noise.png": Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)),
    }
    shot = Image.new("RGB", (640, 400), (245, 245, 245))
    draw = ImageDraw.Draw(shot)
    draw.rectangle([0, 0, 640, 36], fill=(40, 70, 140))
    draw.text((12, 10), "Inbox - Mail   File  Edit  View  Help", fill="white")
    for row in range(9):
        y = 50 + row * 38
        draw.rectangle([12, y, 628, y + 30], outline=(200, 200, 200), fill="white")
        draw.text((20, y + 8), f"Message {row + 1}: quarterly report, meeting notes, invoice #{1000 + row}",
                  fill=(30, 30, 30))
    images["screenshot.png"] = shot
    doc = Image.new("RGB", (420, 600), "white")
    draw = ImageDraw.Draw(doc)
    for line in range(34):
        width = int(rng.integers(200, 380))
        draw.text((24, 20 + line * 16), "lorem ipsum dolor sit amet consectetur " * 2, fill=(20, 20, 20))
        draw.line([24, 32 + line * 16, 24 + width, 32 + line * 16], fill=(235, 235, 235))
    images["document.png"] = doc
    return images


def write_outside_photos(folder: str | Path, made: bool = True) -> list[Path]:
    """Copy the package photos and write the made images into ``folder``; return the files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for source in package_photos():
        target = folder / f"{source.parent.parent.name}_{source.name}"
        shutil.copyfile(source, target)
        paths.append(target)
    if made:
        for name, image in made_images().items():
            image.save(folder / f"made_{name}")
            paths.append(folder / f"made_{name}")
    return paths
