"""A Lightning callback for bench/streaming.py: seconds to the first training step and the step rate
after the first five, written to ``out`` by rank 0 (``<first> <steps per second>``); with
``memory_out``, the process's resident and unique memory (MiB) at every tenth of the epoch, and the
main process's largest resident memory over the steps of each tenth (read after every step)."""

from __future__ import annotations

import os
import time

from lightning.pytorch.callbacks import Callback


class StepTimer(Callback):
    def __init__(self, out: str, skip: int = 5, memory_out: str | None = None) -> None:
        self.out, self.skip, self.memory_out, self.times = out, skip, memory_out, []
        self.start = time.perf_counter()
        self.memory: list[str] = []
        self.tenth_max = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter())
        batches = int(trainer.num_training_batches)
        if self.memory_out:
            with open("/proc/self/statm") as f:
                self.tenth_max = max(self.tenth_max, int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
        if self.memory_out and (batch_idx + 1) % max(1, batches // 10) == 0:
            import psutil

            procs = [psutil.Process(), *psutil.Process().children(recursive=True)]
            infos = [p.memory_full_info() for p in procs]
            rss, uss = (sum(getattr(i, k) for i in infos) / 2**20 for k in ("rss", "uss"))
            self.memory.append(f"{rss:.0f}/{uss:.0f}/{self.tenth_max / 2**20:.0f}")
            self.tenth_max = 0

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_rank or len(self.times) <= self.skip + 1:
            return
        rate = (len(self.times) - 1 - self.skip) / (self.times[-1] - self.times[self.skip])
        with open(self.out, "w") as f:
            f.write(f"{self.times[0] - self.start} {rate}\n")
        if self.memory_out:
            with open(self.memory_out, "w") as f:
                f.write(" ".join(self.memory) + "\n")
