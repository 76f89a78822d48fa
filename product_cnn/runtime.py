"""Process-level settings: glibc malloc tuning for fast CPU training, and a quieter Lightning.

PyTorch's large activation buffers are allocated with ``mmap`` and handed back to the OS after
every op by default glibc malloc, so CPU training spends most of its time in page faults.
Keeping freed memory in the heap instead is much faster (docs/performance.md has the numbers).
This is the in-code equivalent of ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=... MALLOC_TOP_PAD_=...``.
What the heap keeps grows in steps over a long run (freed blocks the next buffers do not fit):
:class:`MemoryBound` hands free pages back whenever resident memory passes the first steps' peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
import warnings
from collections.abc import Callable

log = logging.getLogger(__name__)

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4

_TRIM_THRESHOLD = -1  # glibc reads it as size_t: SIZE_MAX, never give freed memory back
_TOP_PAD = 2**30  # grow the heap in 1 GiB steps (address space only until touched)

WARMUP_STEPS = 20  # the steps in which a training heap grows to its working size
_applied = False
_libc: ctypes.CDLL | None = None


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
    global _libc
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
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
    _applied, _libc = ok, libc if ok else None
    log.debug("glibc malloc tuned for PyTorch CPU training: %s", ok)
    return ok


def malloc_tuned() -> bool:
    """Whether :func:`tune_malloc` changed this process's allocator."""
    return _applied


def trim_heap() -> None:
    """Give the heap's free pages back to the OS (glibc ``malloc_trim(0)``; the blocks stay in the
    heap, their pages are touched again when reused). Only where :func:`tune_malloc` applied."""
    if _libc is not None:
        _libc.malloc_trim(0)


def resident_bytes() -> int | None:
    """This process's resident memory (Linux ``/proc/self/statm``), or None where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class MemoryBound:
    """Keeps the tuned heap near the size the first steps needed.

    :meth:`step` is called after every step: the first ``warmup`` steps measure the peak resident
    memory (a step's buffers, kept for the next by :func:`tune_malloc`); afterwards, whenever
    resident memory is more than ``slack`` above that peak, :func:`trim_heap` hands the free pages
    back. A trim costs one step of page faults; a heap that does not grow is never trimmed, and one
    over the limit again within ``warmup`` steps of a trim raises the peak instead (the steps need it).
    Inactive (``active`` False) where the allocator was not tuned (``PRODUCT_CNN_TUNE_MALLOC=0``).
    """

    def __init__(self, warmup: int = WARMUP_STEPS, slack: float = 0.03,
                 rss: Callable[[], int | None] = resident_bytes, trim: Callable[[], None] = trim_heap,
                 active: bool | None = None) -> None:
        self.warmup, self.slack = warmup, slack
        self.rss, self.trim = rss, trim
        self.active = malloc_tuned() if active is None else active
        self.steps, self.peak, self.trims, self.last_trim = 0, 0, 0, 0

    @property
    def limit(self) -> float | None:
        """Resident bytes above which the heap is trimmed (None while the peak is measured)."""
        return self.peak * (1 + self.slack) if self.steps >= self.warmup else None

    def step(self) -> bool:
        """After a step: measure, or trim when over the limit; True when it trimmed."""
        if not self.active:
            return False
        self.steps += 1
        now = self.rss()
        if now is None:
            self.active = False
            return False
        if self.steps <= self.warmup:
            self.peak = max(self.peak, now)
            return False
        if now <= self.limit:
            return False
        if self.last_trim and self.steps - self.last_trim <= self.warmup:
            self.peak = now  # over again right after a trim: the steps need more now, not a leak
            return False
        self.trim()
        self.trims, self.last_trim = self.trims + 1, self.steps
        return True


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
