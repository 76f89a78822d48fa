"""The pooled features a network classifies from: the input of its last linear layer, captured
with a forward pre-hook while the network computes its logits (one pass gives both)."""

from __future__ import annotations

import torch
from torch import nn


class Penultimate:
    """``with Penultimate(net) as grab: logits = net(x); feats = grab.take()``.

    Several forward passes before :meth:`take` (test-time views) keep the first one's features.
    """

    def __init__(self, net: nn.Module) -> None:
        linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(f"{type(net).__name__} has no linear classifier layer")
        self.layer = linears[-1]
        self._captured: list[torch.Tensor] = []
        self._handle = None

    def _grab(self, module: nn.Module, args: tuple) -> None:
        self._captured.append(args[0].detach().flatten(1).float())

    def take(self) -> torch.Tensor:
        """The features of the first forward pass since the last call (float32, ``(N, D)``)."""
        if not self._captured:
            raise RuntimeError("no forward pass since the last take()")
        first, self._captured = self._captured[0], []
        return first

    def __enter__(self) -> Penultimate:
        self._handle = self.layer.register_forward_pre_hook(self._grab)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
