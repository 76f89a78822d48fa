"""Samplers whose order is a function of (seed, epoch), so a resumed run repeats the same epochs.

Lightning calls ``set_epoch`` before every epoch; each epoch draws from a generator seeded with
``seed + epoch`` (see training/epoch_seed.py for the global generators).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
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


class EpochWeightedSampler(_EpochSampler):
    """``length`` draws with replacement, index i with probability ~ ``weights[i]``, seeded by epoch."""

    def __init__(self, weights: list[float], length: int | None = None, seed: int = 0) -> None:
        super().__init__(length if length is not None else len(weights), seed)
        self.weights = torch.as_tensor(weights, dtype=torch.double)

    def __iter__(self) -> Iterator[int]:
        yield from torch.multinomial(self.weights, self.length, replacement=True,
                                     generator=self._generator()).tolist()
