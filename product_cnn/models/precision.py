"""``precision=auto``: what a run computes in, for training and for a checkpoint's inference.

Training (``trainer.precision=auto``): bf16-mixed where the device computes bf16 natively, else
fp32. Native bf16: a CPU with the ``avx512_bf16`` or ``amx_bf16`` instructions (``/proc/cpuinfo``
flags), or a CUDA device that supports bf16; elsewhere bf16 is emulated and slower than fp32.

A trained checkpoint (``trained=``, what it was trained and tested in): ``auto`` runs it in that
precision, bf16 only where native, so eval.py, predict.py and serve.py give the probabilities of
the run's own test report; an fp32 checkpoint (an imported Keras model, a probe, one written
before the precision was recorded) stays fp32, bf16 only when asked. The choice and the reason
are logged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo does not exist)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def native_bf16(accelerator: str, flags: Iterable[str] | None = None,
                cuda_bf16: bool | None = None) -> tuple[bool, str]:
    """(whether ``accelerator`` computes bf16 natively, why); imports torch only for a GPU."""
    on_gpu = accelerator in ("gpu", "cuda") or accelerator.startswith("cuda:")
    if accelerator == "auto":
        import torch

        on_gpu = torch.cuda.is_available()
    if on_gpu:
        import torch

        supported = torch.cuda.is_bf16_supported() if cuda_bf16 is None else cuda_bf16
        return supported, "the GPU computes bf16 natively" if supported else "the GPU has no native bf16"
    native = sorted(set(cpu_flags() if flags is None else flags) & set(NATIVE_BF16_FLAGS))
    if native:
        return True, f"the CPU computes bf16 natively ({', '.join(native)})"
    return False, "the CPU has no native bf16 (no avx512_bf16 or amx_bf16): bf16 would be emulated"


def resolve_precision(requested: str, accelerator: str, flags: Iterable[str] | None = None,
                      cuda_bf16: bool | None = None, trained: str | None = None) -> tuple[str, str | None]:
    """(Lightning precision, reason); ``reason`` is None when ``requested`` is not ``auto`` (kept as is).

    ``trained``: a checkpoint's own precision (``"32"`` or ``"bf16"``); None for a new training run."""
    if str(requested) != "auto":
        return str(requested), None
    if trained is not None and trained != "bf16":
        return "32-true", "the checkpoint was trained and tested in fp32 (bf16 only when asked)"
    native, why = native_bf16(accelerator, flags, cuda_bf16)
    if trained == "bf16":
        why = f"the checkpoint was trained in bf16 and {why}" if native else \
            f"the checkpoint was trained in bf16, but {why}"
    return ("bf16-mixed" if native else "32-true"), why
