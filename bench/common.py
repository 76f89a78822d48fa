"""Shared measuring tools of the benchmarks: matmul ceilings, a plain PyTorch loop, timers."""

from __future__ import annotations

import contextlib
import itertools
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from product_cnn.models.mirror import KerasCNN

SLASH5 = Path(__file__).resolve().parents[2] / "shared" / "data" / "slash5"  # the real photos, if present


def photo_files(folder: Path) -> list[str]:
    """Every photo under ``folder`` (the project's own image search), or exit with one line."""
    from product_cnn.data.folder import find_images

    images, _ = find_images(folder)
    if not images:
        raise SystemExit(f"error: no photos in {folder}")
    return images


# Forward FLOPs of one 256x256 image (multiply-adds counted as 2): conv1, conv2, dense layers.
FORWARD_GFLOP = (251 * 251 * 64 * 6 * 6 * 3 * 2 + 123 * 123 * 16 * 3 * 3 * 64 * 2
                 + 59536 * 64 * 2 + 64 * 16 * 2 + 16 * 5 * 2) / 1e9
TRAIN_GFLOP = 3 * FORWARD_GFLOP  # forward + backward (input and weight gradients)


def machine() -> str:
    """The CPU (and GPU) this runs on, in one line."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    from product_cnn.models.precision import cpu_flags

    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    flags = " ".join(f for f in wanted if f in cpu_flags()) or "none of avx2/avx512/amx"
    text = f"{cpu} (flags: {flags}), {torch.get_num_threads()} threads, torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name()}"
    return text


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_spread(values: list[float], digits: int = 1, width: int = 7, unit: str = "") -> str:
    """``median (min-max)`` of a list of measurements, e.g. ``   18.5 (16.2-19.0)``."""
    return (f"{statistics.median(values):{width}.{digits}f}{unit} "
            f"({min(values):.{digits}f}-{max(values):.{digits}f})")


def matmul_gflops(device: torch.device, dtype: torch.dtype, seconds: float = 1.0,
                  windows: int = 5) -> float:
    """Square matrix-multiply rate in GFLOP/s: the best of ``windows`` timed windows.

    A ceiling is what the hardware can do, so the best window counts (on a shared VM the
    median can be far lower), which makes the "% of ceiling" figures conservative.
    """
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    rates = []
    for _ in range(windows):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for _ in range(10 if device.type == "cuda" else 1):
                a @ b
                count += 1
            sync(device)
        rates.append(2 * n**3 * count / (time.perf_counter() - start) / 1e9)
    return max(rates)


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def make_net(device: torch.device, channels_last: bool, compile: bool, size: int = 256,
             fused: bool = True) -> KerasCNN:
    torch.manual_seed(0)
    net = KerasCNN(num_classes=5, image_size=size, fused_block=fused).to(device)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    if compile:
        net.compile()
    return net


def timed_rates(step: Callable[[], None], device: torch.device, batch: int, steps: int,
                repeats: int, warmup: int) -> list[float]:
    """Images per second of ``repeats`` timed runs of ``steps`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    sync(device)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        rates.append(batch * steps / (time.perf_counter() - start))
    return rates


def plain_loop(device: torch.device, images: torch.Tensor, labels: torch.Tensor, *,
               channels_last: bool, bf16: bool, compile: bool, steps: int, repeats: int,
               warmup: int, fused: bool = True) -> tuple[list[float], list[float]]:
    """Training and inference img/s of a hand-written loop over one fixed uint8 batch.

    The loop does what a minimal script would: uint8 -> float in [0, 1], forward, cross-entropy,
    backward, Adam step. Nothing else: no metrics, no logging, no data loading.
    """
    net = make_net(device, channels_last, compile, images.shape[-1], fused)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-7)
    images, labels = images.to(device), labels.to(device)

    def train_step() -> None:
        x = (images.float() / 255).contiguous(memory_format=fmt)
        with autocast(device, bf16):
            loss = F.cross_entropy(net(x), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def infer_step() -> None:
        x = (images.float() / 255).contiguous(memory_format=fmt)
        with autocast(device, bf16):
            net(x).softmax(1)

    net.train()
    train = timed_rates(train_step, device, len(images), steps, repeats, warmup)
    net.eval()
    infer = timed_rates(infer_step, device, len(images), steps, repeats, warmup)
    return train, infer


class StepTimer(L.Callback):
    """Wall-clock time stamps of training batches and epochs (data loading included).

    With ``every=n`` a time stamp is taken (after waiting for the GPU) every n-th training
    batch; with 0 (default) none is, so that the timer itself adds no GPU sync per step.
    """

    def __init__(self, out: str | None = None, every: int = 0) -> None:
        self.out = out  # where on_fit_end writes the times (JSON), when given
        self.every = every
        self.batch_ends: list[float] = []  # one per `every` batches
        self.train_epochs: list[float] = []  # training steps of each epoch
        self._starts: list[float] = []  # of each epoch, plus the end of training
        self._train_done = 0.0
        self._batches = 0

    @property
    def epochs(self) -> list[float]:
        """Whole epochs: from one epoch's start to the next (validation, checkpoints and all)."""
        return [b - a for a, b in itertools.pairwise(self._starts)]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._batches += 1
        if self.every and self._batches % self.every == 0:
            sync(pl_module.device)
            self.batch_ends.append(time.perf_counter())

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        sync(pl_module.device)
        self._starts.append(time.perf_counter())
        self._train_done = 0.0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:  # validation runs inside the training epoch
            sync(pl_module.device)
            self._train_done = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        sync(pl_module.device)
        self.train_epochs.append((self._train_done or time.perf_counter()) - self._starts[-1])

    def on_train_end(self, trainer, pl_module) -> None:  # after the last epoch's checkpoints
        sync(pl_module.device)
        self._starts.append(time.perf_counter())

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.out:
            import json
            import resource

            peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
            Path(self.out).write_text(json.dumps({
                "epochs": self.epochs, "train_epochs": self.train_epochs, "peak_rss_mib": peak_mib,
            }))

    def rates(self, batch: int, skip: int = 1) -> list[float]:
        """img/s between consecutive time stamps (``every`` batches each), after ``skip`` stamps."""
        ends = self.batch_ends[max(skip - 1, 0):]
        return [batch * self.every / (b - a) for a, b in itertools.pairwise(ends)]


def fixed_batch(batch: int, size: int = 256, classes: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """A reproducible synthetic uint8 batch and labels."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=g)
    return images, torch.arange(batch) % classes


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Keep Lightning's banners out of the benchmark's table."""
    import logging
    import warnings

    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)
