"""Several trained networks as one: the mean of their class probabilities.

``predict.py ckpt_path='[a.ckpt,b.ckpt]'``, or a glob pattern such as
``'outputs/train/multirun_<date>/*/checkpoints/epoch_*.ckpt'`` (the checkpoint of every run
of a sweep), classifies with the average of the checkpoints' softmax outputs (see
:meth:`product_cnn.inference.predictor.Predictor.from_checkpoint`). The members must have been trained on
the same class list and image size; anything else is refused in one line. What ensembles
measured on slash5 is in docs/models.md.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from product_cnn.data.images import image_hw
from product_cnn.errors import CheckpointError


class ProbabilityAverage(nn.Module):
    """Returns ``log(mean_i softmax(net_i(x)))``: its softmax is the members' mean probability.

    Log-probabilities keep the output a valid set of logits, so everything downstream that
    applies a softmax (predict, flip TTA, serving) sees the averaged probabilities.
    """

    def __init__(self, nets: Sequence[nn.Module]) -> None:
        super().__init__()
        if not nets:
            raise ValueError("an ensemble needs at least one network")
        self.nets = nn.ModuleList(nets)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        log_probs = torch.stack([torch.log_softmax(net(images).float(), dim=1) for net in self.nets])
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.nets))


def check_members(names: Sequence[str], class_lists: Sequence[Sequence[str]],
                  image_sizes: Sequence[object], decodes: Sequence[str] | None = None) -> None:
    """Raise :class:`CheckpointError` in one line unless every member has the first one's
    class list (same order), image size and decoding (``data.decode``)."""
    decodes = list(decodes) if decodes is not None else ["reduced"] * len(names)
    for name, classes, size, decode in zip(names[1:], class_lists[1:], image_sizes[1:], decodes[1:],
                                           strict=True):
        if list(classes) != list(class_lists[0]):
            raise CheckpointError(f"{name} was trained on classes {list(classes)}, {names[0]} on "
                                  f"{list(class_lists[0])}: an ensemble needs one class list")
        if image_hw(size) != image_hw(image_sizes[0]):
            raise CheckpointError(f"{name} takes {size} px images, {names[0]} {image_sizes[0]} px: "
                                  "an ensemble needs one image size")
        if decode != decodes[0]:
            raise CheckpointError(f"{name} was trained on photos decoded {decode!r}, {names[0]} "
                                  f"{decodes[0]!r}: an ensemble needs one data.decode")


def expand_checkpoints(paths: str | Path | Sequence[str | Path]) -> list[str]:
    """One path, a list of paths, or glob patterns -> the checkpoint files, in order.

    A pattern that matches no file is refused in one line; a plain path is kept as given (its
    reader says when it is missing).
    """
    items = [paths] if isinstance(paths, (str, Path)) else list(paths)
    files: list[str] = []
    for item in items:
        text = os.path.expanduser(str(item))
        if glob.has_magic(text) and not os.path.exists(text):
            matches = sorted(p for p in glob.glob(text, recursive=True) if os.path.isfile(p))
            if not matches:
                raise CheckpointError(f"no checkpoint files match {text}")
            files += matches
        else:
            files.append(text)
    if not files:
        raise CheckpointError("no checkpoint given: set ckpt_path=path/to/best.ckpt")
    return list(dict.fromkeys(files))
