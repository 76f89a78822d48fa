"""Process-level settings: glibc malloc tuning for fast CPU training, and a quieter Lightning.

PyTorch's large activation buffers are allocated with ``mmap`` and handed back to the OS after
every op by default glibc malloc, so CPU training spends most of its time in page faults.
Keeping freed memory in the heap instead is much faster (docs/performance.md has the numbers).
This is the in-code equivalent of ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=... MALLOC_TOP_PAD_=...``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
import warnings

log = logging.getLogger(__name__)

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4

_TRIM_THRESHOLD = -1  # glibc reads it as size_t: SIZE_MAX, never give freed memory back
_TOP_PAD = 2**30  # grow the heap in 1 GiB steps (address space only until touched)

_applied = False


def tune_malloc() -> bool:
    """Tell glibc malloc to keep freed memory instead of returning it to the OS.

    Returns True when the settings were applied (Linux with glibc), False otherwise. Does
    nothing when the user set ``PRODUCT_CNN_TUNE_MALLOC=0`` or any ``MALLOC_*`` variable
    of their own, or when jemalloc/tcmalloc is preloaded.
    """
    global _applied
    if _applied:
        return True
    if os.environ.get("PRODUCT_CNN_TUNE_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    if any(k.startswith("MALLOC_") for k in os.environ) or "LD_PRELOAD" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = all(
        mallopt(param, value)
        for param, value in (
            (_M_MMAP_MAX, 0),
            (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD),
            (_M_TOP_PAD, _TOP_PAD),
        )
    )
    _applied = ok
    log.debug("glibc malloc tuned for PyTorch CPU training: %s", ok)
    return ok


def quiet_lightning() -> None:
    """Drop messages that tell a user nothing about their run; under DDP, rank 0 alone tells the story.

    The rank is read as Lightning's ``rank_zero_only`` reads it (its environment variables), without
    importing Lightning: predict.py and serve.py do not need its seconds of start-up."""
    lightning = sys.modules.get("lightning.pytorch.utilities")
    if lightning is not None:
        rank = lightning.rank_zero_only.rank
    else:
        found = (os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"))
        rank = int(next((r for r in found if r is not None), 0))
    if rank > 0:
        logging.getLogger("product_cnn").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # eval.py restores weights only; the training callbacks it names are not needed for that
    warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`, callbacks")
    # litdata's INFO lines (cache sizing, reader choice) repeat per split and per worker
    logging.getLogger("litdata").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: not str(record.msg).startswith("💡 Tip")
    )
