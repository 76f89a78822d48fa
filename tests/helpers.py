"""Test helpers: tiny generated ImageFolder trees and Hydra-composed configs on CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from PIL import Image

from product_cnn.config import compose_config

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
SHARED_SLASH5 = REPO.parent / "shared" / "data" / "slash5"

# one clearly different colour per class, so a tiny model can learn them in a few steps
PALETTE = [(220, 40, 40), (40, 180, 60), (40, 70, 220), (230, 200, 40), (160, 60, 200)]


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``folder``: its sha256 and mtime (to show that nothing was changed)."""
    import hashlib
    import os

    return {p: (hashlib.sha256(open(p, "rb").read()).hexdigest(), os.stat(p).st_mtime_ns)
            for p in sorted(str(x) for x in folder.rglob("*") if x.is_file())}


def write_image(path: Path, color: tuple[int, int, int], seed: int, size=(48, 40)) -> Path:
    """A small noisy picture dominated by ``color``; format from the suffix."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(color) + rng.normal(0, 25, size=(size[1], size[0], 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8), "RGB").save(path)
    return path


def make_tree(root: Path, counts: dict[str, int], layout: str = "flat", suffix: str = ".jpg") -> Path:
    """``root/<Class>/i.jpg`` (flat) or ``root/{train,val,test}/<Class>/i.jpg`` (presplit)."""
    for label, (name, n) in enumerate(counts.items()):
        color = PALETTE[label % len(PALETTE)]
        for i in range(n):
            if layout == "flat":
                folder = root / name
            else:  # presplit: 60/20/20 by index
                folder = root / ("test" if i % 5 == 4 else "val" if i % 5 == 3 else "train") / name
            write_image(folder / f"img_{i:03d}{suffix}", color, seed=label * 1000 + i)
    return root


def compose_cfg(config_name: str, overrides: list[str], output_dir: Path, cache_dir: Path) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` as Hydra would for a run, writing under ``output_dir``.

    ``eval`` and ``predict`` run in fp32 unless the overrides say otherwise, like training in
    :data:`FAST`: a test that compares their numbers with training's or with ``Predictor``'s needs
    the same arithmetic on both sides (``auto`` would pick bf16 for one of them on a CPU with
    native bf16).
    """
    if config_name == "eval" and not any(o.startswith("trainer.precision=") for o in overrides):
        overrides = ["trainer.precision=32-true", *overrides]
    if config_name == "predict" and not any(o.startswith("precision=") for o in overrides):
        overrides = ["precision=32", *overrides]
    return compose_config(config_name, overrides, output_dir, cache_dir)


# the tiny drawn trees' photos of a class all look alike to a pretrained network: the same-photo
# check would merge each class into one group (tests/data/test_same_photo.py turns it on)
NO_SAME_PHOTO = "++data.same_photo=null"
FAST = [  # small images, one CPU process, no progress bar: seconds per epoch
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",  # the same arithmetic on every CI machine (auto: test_precision.py)
    "data.image_size=64",
    "data.batch_size=8",
    "data.num_workers=0",
    "callbacks.rich_progress_bar=null",
    "callbacks.model_summary=null",
    NO_SAME_PHOTO,
]
