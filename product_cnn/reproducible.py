"""Randomness that is a function of (seed, epoch), so a resumed run repeats the same epochs.

A run killed at any point and resumed from its last end-of-epoch checkpoint must train the
next epochs exactly as the uninterrupted run did. Saving and restoring generator states is
fragile (Lightning creates data iterators, which draw random numbers, at different moments in
a fresh and a resumed run), so instead every epoch starts from its own seed: the shuffling
order comes from :class:`EpochShuffleSampler` and dropout (and anything else on the global
generators) from :class:`EpochSeed`. Both depend on the run's seed and the epoch number only,
and both are stored with the checkpoint through the config.
"""

from __future__ import annotations

from collections.abc import Iterator

import lightning as L
import torch
from lightning.fabric.utilities.seed import seed_everything
from lightning.pytorch.callbacks import Callback
from torch.utils.data import Sampler


class _EpochSampler(Sampler[int]):
    """``length`` indices per epoch, drawn from a generator seeded with ``seed + epoch``."""

    def __init__(self, length: int, seed: int = 0) -> None:
        self.length = length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # Lightning calls it before every epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed + self.epoch)


class EpochShuffleSampler(_EpochSampler):
    """A random permutation per epoch, drawn from ``seed + epoch``."""

    def __iter__(self) -> Iterator[int]:
        yield from torch.randperm(self.length, generator=self._generator()).tolist()


class EpochSeed(Callback):
    """Re-seed Python, NumPy and torch at the start of every training epoch from seed + epoch.

    ``seed: null`` turns it off (the run is then not reproducible anyway).
    """

    def __init__(self, seed: int | None = 0) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.seed is not None:
            # distinct per process under DDP, same on every restart
            seed_everything(self.seed + 1000 * trainer.current_epoch + trainer.global_rank,
                            workers=True, verbose=False)


class EpochWeightedSampler(_EpochSampler):
    """``length`` draws with replacement, index i with probability ~ ``weights[i]``, seeded by epoch."""

    def __init__(self, weights: list[float], length: int | None = None, seed: int = 0) -> None:
        super().__init__(length if length is not None else len(weights), seed)
        self.weights = torch.as_tensor(weights, dtype=torch.double)

    def __iter__(self) -> Iterator[int]:
        yield from torch.multinomial(self.weights, self.length, replacement=True,
                                     generator=self._generator()).tolist()
