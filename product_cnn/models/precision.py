"""``trainer.precision=auto``: bf16-mixed where the device computes bf16 natively, else fp32.

Native bf16: a CPU with the ``avx512_bf16`` or ``amx_bf16`` instructions (``/proc/cpuinfo``
flags), or a CUDA device that supports bf16. Elsewhere bf16 is emulated and slower than fp32,
so ``auto`` resolves to ``32-true``. Resolved before the Trainer is built; the choice and the
reason are logged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch

NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo does not exist)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def resolve_precision(requested: str, accelerator: str, flags: Iterable[str] | None = None,
                      cuda_bf16: bool | None = None) -> tuple[str, str | None]:
    """(precision, reason); ``reason`` is None when ``requested`` is not ``auto`` (kept as is)."""
    if str(requested) != "auto":
        return str(requested), None
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if on_gpu:
        supported = torch.cuda.is_bf16_supported() if cuda_bf16 is None else cuda_bf16
        if supported:
            return "bf16-mixed", "the GPU computes bf16 natively"
        return "32-true", "the GPU has no native bf16"
    native = sorted(set(cpu_flags() if flags is None else flags) & set(NATIVE_BF16_FLAGS))
    if native:
        return "bf16-mixed", f"the CPU computes bf16 natively ({', '.join(native)})"
    return "32-true", "the CPU has no native bf16 (no avx512_bf16 or amx_bf16): bf16 would be emulated"
