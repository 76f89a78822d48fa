"""Hydra multirun: at the end of a sweep, the cross-validation summary and the failed jobs.

A job that fails inside a sweep does not stop the others (``tasks.run`` logs its error and
:func:`record_job_failure` leaves it in the job folder's ``error.txt``). When the sweep ends, a
k-fold sweep gets its summary (:mod:`product_cnn.evaluation.cv`), every failed job is named in one
line each, and the exit status is 1 if any failed.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from product_cnn.atomic import write_text
from product_cnn.errors import SweepError

log = logging.getLogger(__name__)


class SweepReport(Callback):
    """Hydra callback (conf/hydra/default.yaml) run once a multirun has finished."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from product_cnn.evaluation.cv import ERROR_FILE, write_cv_summary  # torch, matplotlib: seconds

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


def in_multirun() -> bool:
    """True inside a job of ``train.py -m ...``."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def record_job_failure(message: str) -> None:
    """Leave a failed job's one-line error in its folder, for :class:`SweepReport` to name."""
    from product_cnn.evaluation.cv import ERROR_FILE

    write_text(Path(HydraConfig.get().runtime.output_dir, ERROR_FILE), message + "\n")


def check_optimized_metric(cfg: DictConfig, has_val: bool) -> None:
    """Refuse, before training, a metric that a searching sweeper (Optuna) optimises but this run
    cannot log. Plain runs and grid sweeps (Hydra's basic sweeper) ignore ``optimized_metric``."""
    metric = cfg.get("optimized_metric")
    if not metric or not in_multirun():
        return
    if HydraConfig.get().sweeper.get("_target_", "").endswith("BasicSweeper"):
        return
    fix = "data.val_fraction=0.2 callbacks.model_checkpoint.monitor=val/acc"
    if metric.startswith("val/") and not has_val:
        raise SweepError(f"optimized_metric={metric} needs validation photos, but this run has none "
                         f"(data.val_fraction=0, as in experiment=slash5): add {fix}")
    monitor = OmegaConf.select(cfg, "callbacks.model_checkpoint.monitor")
    if metric.endswith("_best") and monitor != metric.removesuffix("_best"):
        base = metric.removesuffix("_best")
        raise SweepError(f"optimized_metric={metric} is the best {base} that model_checkpoint monitors, "
                         f"but it monitors {monitor}: add callbacks.model_checkpoint.monitor={base}")


def refresh_cv_summary(run_dir: str | Path) -> None:
    """A resumed k-fold run (not inside its sweep): its sweep's summary, written again to count it."""
    from product_cnn.evaluation.cv import sweep_of, write_cv_summary

    sweep = sweep_of(run_dir)
    if sweep is not None and not in_multirun():
        write_cv_summary(sweep)
