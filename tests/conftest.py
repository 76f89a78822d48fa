"""Shared fixtures: tiny generated ImageFolder trees and Hydra-composed configs on CPU."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig
from PIL import Image

from product_cnn.config import compose_config

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
SHARED_SLASH5 = REPO.parent / "shared" / "data" / "slash5"

# one clearly different colour per class, so a tiny model can learn them in a few steps
PALETTE = [(220, 40, 40), (40, 180, 60), (40, 70, 220), (230, 200, 40), (160, 60, 200)]


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


@pytest.fixture(autouse=True, scope="session")
def _cache_in_tmp(tmp_path_factory) -> None:
    """Decoded-image caches of the tests go to a temporary folder, not the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PRODUCT_CNN_CACHE", str(tmp_path_factory.mktemp("product_cnn_cache")))
    yield
    mp.undo()


@pytest.fixture
def tree_factory(tmp_path: Path) -> Callable[..., Path]:
    def factory(counts: dict[str, int] | None = None, layout: str = "flat", name: str = "photos") -> Path:
        return make_tree(tmp_path / name, counts or {"Bags": 10, "Cups": 10, "Pens": 10}, layout)

    return factory


def compose_cfg(config_name: str, overrides: list[str], output_dir: Path, cache_dir: Path) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` as Hydra would for a run, writing under ``output_dir``."""
    return compose_config(config_name, overrides, output_dir, cache_dir)


FAST = [  # small images, one CPU process, no progress bar: seconds per epoch
    "trainer.accelerator=cpu",
    "data.image_size=64",
    "data.batch_size=8",
    "data.num_workers=0",
    "callbacks.rich_progress_bar=null",
    "callbacks.rich_model_summary=null",
]


@pytest.fixture
def train_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    def factory(*overrides: str) -> DictConfig:
        return compose_cfg("train", [*FAST, *overrides], tmp_path / "run", tmp_path / "cache")

    return factory


@pytest.fixture
def shared_slash5() -> Path:
    if not SHARED_SLASH5.is_dir():
        pytest.skip(f"needs the real photos at {SHARED_SLASH5} (not in this checkout)")
    return SHARED_SLASH5


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> dict:
    """A small training run (3 classes x 20 photos, 64x64, 2 epochs) for report/predict/export tests."""
    from product_cnn.tasks import train

    base = tmp_path_factory.mktemp("tiny_run")
    root = make_tree(base / "photos", {"Bags": 20, "Cups": 20, "Pens": 20})
    cfg = compose_cfg("train", [*FAST, "data=folder", f"data.root={root}", "trainer.max_epochs=2"],
                      base / "run", base / "cache")
    metrics = train(cfg)
    run = Path(cfg.paths.output_dir)
    return {
        "cfg": cfg, "metrics": metrics, "run": run, "root": root,
        "best": next((run / "checkpoints").glob("epoch_*.ckpt")),
    }
