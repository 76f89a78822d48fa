"""The model summary at the start of every run: a Keras-style table with true numbers.

Layer, output shape and parameter count in order, and the totals as Keras counts them
(BatchNorm running mean and variance are non-trainable parameters). For the Keras mirror the
rows are the original's Keras layers with their Keras names and NHWC output shapes, so the
table reads like the original ``model.summary()``; for a torchvision network they are the
network's own top-level modules with PyTorch's NCHW shapes. The FLOPs are those of one image
at the training size. The table goes to the log (so ``train.log`` has it) and, with
``python train.py +summary_only=true``, to the screen without training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from product_cnn.data.images import ImageSize, image_hw


@dataclass
class Row:
    """One line of the table."""

    name: str
    kind: str
    shape: tuple[int | None, ...]
    params: int


@dataclass
class Summary:
    """The rows, the totals and the FLOPs of one image's forward pass."""

    title: str
    rows: list[Row]
    total: int
    trainable: int
    flops: int
    image_size: tuple[int, int]

    @property
    def non_trainable(self) -> int:
        return self.total - self.trainable


def batchnorm_statistics(module: nn.Module) -> int:
    """Running means and variances of the BatchNorm layers in ``module`` (Keras' non-trainable)."""
    return sum(m.running_mean.numel() + m.running_var.numel() for m in module.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None)


def keras_count(modules: tuple[nn.Module, ...]) -> int:
    """Parameters as Keras counts them: weights plus BatchNorm statistics."""
    return sum(sum(p.numel() for p in m.parameters()) + batchnorm_statistics(m) for m in modules)


def _groups(net: nn.Module) -> tuple[str, list[tuple[str, str, tuple[nn.Module, ...]]], bool]:
    """(title, [(name, kind, modules)], Keras NHWC shapes?) for the table of ``net``."""
    if hasattr(net, "keras_layers"):
        return "keras_cnn", net.keras_layers(), True
    children = []
    for prefix, parent in (("", net), ("backbone.", getattr(net, "backbone", None))):
        if parent is None:
            continue
        for name, child in parent.named_children():
            if prefix == "" and name == "backbone":
                continue
            if isinstance(child, nn.Identity):
                continue
            children.append((prefix + name, type(child).__name__, (child,)))
    if hasattr(net, "backbone"):  # normalize, then the backbone's modules, then the head
        children.sort(key=lambda c: {"normalize": 0, "head": 2}.get(c[0], 1))
    return getattr(net, "arch", type(net).__name__), children, False


@torch.no_grad()
def summarize_network(net: nn.Module, image_size: ImageSize) -> Summary:
    """The table of ``net`` for one ``image_size`` image (a forward pass in eval mode)."""
    title, groups, keras = _groups(net)
    shapes: dict[int, tuple[int, ...]] = {}
    hooks = [modules[-1].register_forward_hook(lambda m, i, o, k=index: shapes.__setitem__(k, tuple(o.shape)))
             for index, (_, _, modules) in enumerate(groups) if modules]
    was_training = net.training
    net.eval()
    height, width = image_hw(image_size)
    parameter = next(net.parameters())
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            net(torch.zeros(1, 3, height, width, device=parameter.device, dtype=parameter.dtype))
    finally:
        for hook in hooks:
            hook.remove()
        net.train(was_training)
    rows, previous = [], (1, 3, height, width)
    for index, (name, kind, modules) in enumerate(groups):
        shape = shapes.get(index, previous)
        previous = shape
        if keras and len(shape) == 4:
            shape = (shape[0], shape[2], shape[3], shape[1])  # NCHW -> Keras' NHWC
        rows.append(Row(name, kind, (None, *shape[1:]), keras_count(modules)))
    total = sum(p.numel() for p in net.parameters()) + batchnorm_statistics(net)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    return Summary(title, rows, total, trainable, counter.get_total_flops(), (height, width))


def _size(params: int) -> str:
    """Keras' size in brackets: 4 bytes a parameter."""
    size = params * 4
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size} B"


def format_summary(summary: Summary) -> str:
    """The table as Keras prints it, plus one line with the FLOPs per image."""
    line, double = "_" * 65, "=" * 65
    out = [f'Model: "{summary.title}"', line, f" {'Layer (type)':<27} {'Output Shape':<25} Param #", double]
    for row in summary.rows:
        shape = "(" + ", ".join("None" if s is None else str(s) for s in row.shape) + ")"
        label = f"{row.name} ({row.kind})"
        parts = [label[i:i + 26] for i in range(0, len(label), 26)]  # Keras wraps at 26 characters
        out.append(f" {parts[0]:<27} {shape:<25} {row.params}")
        out += [f" {part}" for part in parts[1:]]
    h, w = summary.image_size
    out += [double,
            f"Total params: {summary.total} ({_size(summary.total)})",
            f"Trainable params: {summary.trainable} ({_size(summary.trainable)})",
            f"Non-trainable params: {summary.non_trainable} ({_size(summary.non_trainable)})",
            line,
            f"Forward FLOPs per {w}x{h} image: {summary.flops / 1e9:.3f} G (multiply-adds count 2)"]
    return "\n".join(out)
