"""``data=demo``: the embedded synthetic demo photos (:mod:`product_cnn.data.demo`), generated once
(``prepare_data``, rank 0 under DDP) and then read like any folder of photos."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from product_cnn.data.cache import default_cache_dir
from product_cnn.data.datamodule import ProductDataModule
from product_cnn.data.demo import default_demo_root, ensure_demo_dataset


class DemoDataModule(ProductDataModule):
    """The demo tree at ``root`` (None: ``<cache_dir>/demo-v4``), ``demo_images_per_class`` photos
    per category drawn from ``demo_seed``; every other option as :class:`ProductDataModule`."""

    def __init__(self, root: str | None = None, *, demo_images_per_class: int = 100, demo_seed: int = 0,
                 cache_dir: str | None = None, **options: Any) -> None:
        root = root or str(default_demo_root(cache_dir or default_cache_dir()))
        super().__init__(root, cache_dir=cache_dir, **options)
        # recorded as before the demo had a module of its own: old and new checkpoints read alike
        self.hparams.update(demo=True, demo_images_per_class=demo_images_per_class, demo_seed=demo_seed)

    def prepare_data(self) -> None:
        ensure_demo_dataset(self.root, self.hparams.demo_images_per_class, self.hparams.demo_seed)

    def setup(self, stage: str | None = None) -> None:
        if not Path(self.root).is_dir():
            self.prepare_data()  # setup() without prepare_data(), e.g. from a notebook
        super().setup(stage)
