"""A Lightning callback for bench/streaming.py: seconds to the first training step and the step rate
after the first five, written to ``out`` by rank 0 (``<first> <steps per second>``)."""

from __future__ import annotations

import time

from lightning.pytorch.callbacks import Callback


class StepTimer(Callback):
    def __init__(self, out: str, skip: int = 5) -> None:
        self.out, self.skip, self.times = out, skip, []
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_rank or len(self.times) <= self.skip + 1:
            return
        rate = (len(self.times) - 1 - self.skip) / (self.times[-1] - self.times[self.skip])
        with open(self.out, "w") as f:
            f.write(f"{self.times[0] - self.start} {rate}\n")
