"""Learning-rate schedules stepped every batch: linear warm-up, then cosine decay or one-cycle."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

SCHEDULES = ("none", "cosine", "onecycle")


def build_schedule(name: str, optimizer: torch.optim.Optimizer, total_steps: int,
                   warmup_steps: int = 0) -> LRScheduler | None:
    """``name`` (one of :data:`SCHEDULES`) over ``total_steps`` optimizer steps, or None for ``none``.

    ``cosine``: linear warm-up from 1% of the learning rate over ``warmup_steps``, then a cosine
    decay to zero. ``onecycle``: torch's OneCycleLR peaking at the optimizer's learning rate
    after ``warmup_steps`` (at least 1% of the run).
    """
    if name not in SCHEDULES:
        raise ValueError(f"model.schedule={name!r} is not one of {', '.join(SCHEDULES)}")
    if name == "none":
        return None
    total_steps = max(1, int(total_steps))
    warmup_steps = min(max(0, int(warmup_steps)), total_steps - 1)
    if name == "onecycle":
        peak = [group["lr"] for group in optimizer.param_groups]
        return OneCycleLR(optimizer, max_lr=peak, total_steps=total_steps,
                          pct_start=max(warmup_steps / total_steps, 0.01))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return 0.01 + 0.99 * step / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return LambdaLR(optimizer, factor)
