"""Epoch wall time of the original experiment on slash5, with and without the decoded-image cache.

    python bench/epoch_time.py --epochs 6            # CPU: a few epochs are enough
    python bench/epoch_time.py --epochs 50           # the whole original run (GPU)

Runs the real command, ``python train.py experiment=original data=folder data.root=<slash5>``
(checkpoints, TensorBoard, progress bar and all; only the final test is left out), once with
``data.cache=true`` and once with ``data.cache=false`` (each in its own process, so
its peak resident memory is its own), and prints the wall time of epochs 2..N (training plus
validation) as median and spread, and the run's peak RSS. It then times the pure compute of one
epoch: the same number of training steps and validation batches as a plain PyTorch loop over
tensors already in memory, which is what an epoch cannot go below.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SLASH5 = REPO.parent / "shared" / "data" / "slash5"


def run_training(root: Path, epochs: int, cache: bool, workdir: Path, extra: list[str]) -> dict:
    out = workdir / f"times_cache_{cache}.json"
    cmd = [
        sys.executable, str(REPO / "train.py"), "experiment=original", "data=folder",
        f"data.root={root}", f"trainer.max_epochs={epochs}", f"data.cache={str(cache).lower()}",
        f"data.cache_dir={workdir / 'cache'}", "test=false",
        "+callbacks.step_timer._target_=common.StepTimer",
        f"+callbacks.step_timer.out={out}", f"hydra.run.dir={workdir / f'run_{cache}'}", *extra,
    ]
    env = {**os.environ, "PYTHONPATH": f"{BENCH}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    result = json.loads(out.read_text())
    result["wall"] = time.perf_counter() - start
    return result


def pure_compute(root: Path, workdir: Path, channels_last: bool, repeats: int) -> list[float]:
    """Seconds for one epoch of training steps + validation batches on in-memory tensors.

    On the GPU when there is one (the tensors then sit in GPU memory), fp32 as the original.
    """
    import torch
    import torch.nn.functional as F
    from common import make_net, sync

    from product_cnn.data.datamodule import ProductDataModule
    from product_cnn.runtime import tune_malloc

    tune_malloc()
    data = ProductDataModule(str(root), batch_size=32, cache=True, cache_dir=str(workdir / "cache"))
    data.prepare_data()
    data.setup("fit")
    split = {}
    for name in ("train", "val"):
        ds = data.dataset(name)
        split[name] = (torch.stack([ds[i][0] for i in range(len(ds))]),
                       torch.tensor([label for _, label in ds.samples]))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    split = {k: (images.to(device), labels.to(device)) for k, (images, labels) in split.items()}
    net = make_net(device, channels_last, compile=False)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-7)

    def batches(name: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        images, labels = split[name]
        return [(images[i:i + 32], labels[i:i + 32]) for i in range(0, len(images), 32)]

    def epoch() -> float:
        start = time.perf_counter()
        net.train()
        for images, labels in batches("train"):
            x = (images.float() / 255).contiguous(memory_format=fmt)
            loss = F.cross_entropy(net(x), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():
            for images, _ in batches("val"):
                net((images.float() / 255).contiguous(memory_format=fmt)).softmax(1)
        sync(device)
        return time.perf_counter() - start

    epoch()  # warm-up
    return [epoch() for _ in range(repeats)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=SLASH5)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--compute-repeats", type=int, default=3)
    parser.add_argument("--cache", choices=("both", "on", "off"), default="both")
    parser.add_argument("overrides", nargs="*", help="more train.py overrides, e.g. trainer=gpu")
    args = parser.parse_args()
    if not args.root.is_dir():
        raise SystemExit(f"error: no photos at {args.root} (pass --root)")
    sys.path.insert(0, str(BENCH))
    from common import machine, median_spread

    def seconds(values: list[float]) -> str:
        return median_spread(values, digits=2, width=6, unit=" s")

    print(f"# {machine()}; experiment=original on {args.root}, {args.epochs} epochs", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        results = {}
        for cache in {"both": (True, False), "on": (True,), "off": (False,)}[args.cache]:
            try:
                results[cache] = run_training(args.root, args.epochs, cache, workdir, args.overrides)
            except subprocess.CalledProcessError as err:
                raise SystemExit(f"error: train.py failed:\n{err.stderr.decode()[-2000:]}") from None
            r = results[cache]
            rest = [e - t for e, t in zip(r["epochs"], r["train_epochs"], strict=False)][1:]
            print(f"cache {'on ' if cache else 'off'}: epoch 1 {r['epochs'][0]:6.2f} s, epochs 2..N "
                  f"{seconds(r['epochs'][1:])} (training steps {seconds(r['train_epochs'][1:])}, "
                  f"validation + epoch end {seconds(rest)}), whole command {r['wall']:6.1f} s, "
                  f"peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
        channels_last = not any(o == "model.channels_last=false" for o in args.overrides)
        compute = pure_compute(args.root, workdir, channels_last, args.compute_repeats)
        print(f"pure compute of one epoch (plain loop, tensors in memory): {seconds(compute)}")
        for cache, r in results.items():
            ratio = statistics.median(r["epochs"][1:]) / statistics.median(compute)
            print(f"{'cached' if cache else 'uncached'} epoch / pure compute: {ratio:.2f}")


if __name__ == "__main__":
    main()
