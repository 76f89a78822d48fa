"""Randomness that is a function of (seed, epoch), so a resumed run repeats the same epochs.

A run killed at any point and resumed from its last end-of-epoch checkpoint must train the
next epochs exactly as the uninterrupted run did. Saving and restoring generator states is
fragile (Lightning creates data iterators, which draw random numbers, at different moments in
a fresh and a resumed run), so instead every epoch starts from its own seed: the shuffling
order comes from ``data.samplers.EpochShuffleSampler`` and dropout (and anything else on the global
generators) from :class:`EpochSeed`. Both depend on the run's seed and the epoch number only,
and both are stored with the checkpoint through the config. With ``per_batch`` every training
batch starts from its own seed too, so that a run resumed from a mid-epoch checkpoint
(``data.checkpoint_every_n_steps``) draws the same dropout masks as the uninterrupted run.
"""

from __future__ import annotations

import lightning as L
from lightning.fabric.utilities.seed import seed_everything
from lightning.pytorch.callbacks import Callback


class EpochSeed(Callback):
    """Re-seed Python, NumPy and torch at the start of every training epoch from seed + epoch.

    ``seed: null`` turns it off (the run is then not reproducible anyway). ``per_batch`` (truthy):
    also before every training batch, from (seed, epoch, step).
    """

    def __init__(self, seed: int | None = 0, per_batch: bool | int | None = False) -> None:
        self.seed = seed
        self.per_batch = bool(per_batch)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.seed is not None:
            # distinct per process under DDP, same on every restart
            seed_everything(self.seed + 1000 * trainer.current_epoch + trainer.global_rank,
                            workers=True, verbose=False)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: object,
                             batch_idx: int) -> None:
        if self.seed is not None and self.per_batch:
            # the step count, not batch_idx: it is restored with the checkpoint
            step = 7919 * (trainer.global_step + 1)
            seed = self.seed + 1000 * trainer.current_epoch + trainer.global_rank + step
            seed_everything(seed % 2**31, workers=True, verbose=False)
