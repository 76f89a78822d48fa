"""Shared fixtures: tiny generated ImageFolder trees and Hydra-composed configs on CPU."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig

from tests.helpers import FAST, SHARED_SLASH5, compose_cfg, make_tree


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
