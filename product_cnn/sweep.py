"""Hydra multirun: at the end of a sweep, the cross-validation summary and the failed jobs.

A job that fails inside a sweep does not stop the others (``tasks.run`` logs its error and
leaves it in the job folder's ``error.txt``). When the sweep ends, a k-fold sweep gets its
summary (:mod:`product_cnn.cv`), every failed job is named in one line each, and the exit
status is 1 if any failed.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from product_cnn.cv import ERROR_FILE, write_cv_summary

log = logging.getLogger(__name__)


class SweepReport(Callback):
    """Hydra callback (conf/hydra/default.yaml) run once a multirun has finished."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        try:
            write_cv_summary(sweep_dir)
        except (ValueError, KeyError, OSError) as err:  # the runs are kept; only the summary is missing
            print(f"error: no cross-validation summary for {sweep_dir}: {err}", file=sys.stderr)
        failed = sorted((p for p in sweep_dir.glob(f"*/{ERROR_FILE}")), key=lambda p: (len(p.parent.name), p))
        if failed:
            for path in failed:
                print(f"error: job {path.parent.name} failed: {path.read_text().strip()}", file=sys.stderr)
            print(f"error: {len(failed)} job(s) of the sweep in {sweep_dir} failed (named above); "
                  "the others completed", file=sys.stderr)
            raise SystemExit(1)
