"""The harness of every entry point: ``run(task, cfg)`` turns a user's error into one line on stderr
(exit status 2), a SIGTERM into Lightning's clean stop, and a failed job of a sweep into a record."""

from __future__ import annotations

import atexit
import gc
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

from hydra.errors import InstantiationException
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from product_cnn.errors import ProductCNNError, SweepError, one_line, user_error
from product_cnn.runtime import quiet_lightning

log = logging.getLogger("product_cnn.tasks")


def run(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run ``task``; a user-facing error becomes one line on stderr and exit status 2. In a multirun a
    failed job is recorded and the sweep goes on (evaluation/sweep.py), except on a SweepError."""
    quiet_lightning()
    atexit.unregister(_quick_teardown)
    atexit.register(_quick_teardown)  # once, however many jobs a multirun runs
    try:
        try:
            return task(cfg)
        except InstantiationException as err:  # our error raised while Hydra built an object
            raise user_error(err) or err from None
    except SystemExit as err:
        if _lightning_sigterm(err):  # Lightning stopped cleanly; ResumeHint said how to resume
            raise SystemExit(128 + signal.SIGTERM) from None
        raise
    except (ProductCNNError, MissingMandatoryValue) as err:
        from product_cnn.evaluation.sweep import in_multirun, record_job_failure

        message = one_line(err)
        log.error(message)
        if in_multirun() and not isinstance(err, SweepError):
            return record_job_failure(message)
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as err:
        from product_cnn.evaluation.sweep import in_multirun, record_job_failure

        if not in_multirun():
            raise
        log.exception("The job failed")
        return record_job_failure(f"{type(err).__name__}: {one_line(err)}")


def _quick_teardown() -> None:
    """At exit: collect what is garbage now, then freeze the rest, so that the interpreter's
    teardown does not walk every object torch and Lightning leave (docs/performance.md).
    Files are closed and atexit handlers run as before."""
    gc.collect()
    gc.freeze()


def _lightning_sigterm(err: SystemExit) -> bool:
    """True for Lightning's SIGTERMException (a SystemExit), without importing Lightning."""
    module = sys.modules.get("lightning.pytorch.utilities.exceptions")
    return module is not None and isinstance(err, module.SIGTERMException)
