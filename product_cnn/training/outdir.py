"""Is there room to write a run? Checked once, before Hydra creates the run folder."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from product_cnn.errors import ProductCNNError

NEEDED_MB = 200  # a few checkpoints (15 MB each), TensorBoard events, reports, logs


def check_writable(path: str | Path, needed_mb: int = NEEDED_MB) -> None:
    """Raise :class:`ProductCNNError` when ``path`` cannot be created and written, or is nearly full.

    Creates nothing: the nearest existing ancestor must be a writable folder with room.
    """
    path = Path(path).expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ProductCNNError(f"output directory {path} cannot be created: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ProductCNNError(f"output directory {path} is not writable (no permission on {existing})")
    free_mb = shutil.disk_usage(existing).free // 2**20
    if free_mb < needed_mb:
        raise ProductCNNError(
            f"only {free_mb} MiB free under {existing}; a run needs about {needed_mb} MiB for "
            "checkpoints and logs (free some space or set hydra.run.dir=/elsewhere)"
        )


class OutputDirCheck(Callback):
    """Hydra callback: refuse, in one line, a run folder that cannot be written (exit status 2)."""

    def _check(self, directory: Any) -> None:
        try:
            check_writable(str(directory))
        except ProductCNNError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir)
