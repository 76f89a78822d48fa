"""data=streaming against data=folder on a large catalogue (bench/make_catalogue.py): optimize
photos/s and shard size, loader photos/s in a plain loop, training steps/s (the mirror and
EfficientNet-Lite0), resident memory over one epoch, 2-process DDP from shards. Prints one line per
number with the machine first. Each section is its own command (one process, cold caches stated):

    python bench/streaming.py decode  --photos /work/catalogue
    python bench/streaming.py prepare --photos /work/catalogue --out /work/shards256 --store image
    python bench/streaming.py loader  --photos /work/catalogue --shards /work/shards256 --data streaming
    python bench/streaming.py train   --data folder --model cnn   (--photos, --shards as above)
    python bench/streaming.py ddp     --shards /work/shards256 --model cnn
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common import machine  # noqa: E402

from product_cnn.data.datamodule import ProductDataModule  # noqa: E402

SPLIT = {"val_fraction": 0.02, "test_fraction": 0.02}  # the train split: 96% of the photos


def _folder(args: argparse.Namespace, **kw) -> ProductDataModule:
    return ProductDataModule(root=args.photos, image_size=args.size, batch_size=args.batch,
                             cache_dir=args.cache, num_workers=args.workers, **SPLIT, **kw)


def decode(args: argparse.Namespace) -> None:
    """One core's decode rate: what the shards' optimize workers do per photo (store=image)."""
    from product_cnn.data.folder import find_images
    from product_cnn.data.images import load_array

    files = find_images(args.photos)[0][: args.n]
    for method in ("reduced", "full"):
        start = time.perf_counter()
        for f in files:
            load_array(f, args.size, decode=method)
        rate = len(files) / (time.perf_counter() - start)
        print(f"decode {method} {args.size}px, one core: {rate:.1f} photos/s ({len(files)} photos)")
    start = time.perf_counter()
    for f in files:
        Path(f).read_bytes()
    rate = len(files) / (time.perf_counter() - start)
    print(f"read file bytes (store=bytes), one core: {rate:.0f} photos/s")


def prepare(args: argparse.Namespace) -> None:
    from product_cnn.data.streaming.prepare import prepare_shards

    dm = _folder(args, cache=False, skip_bad_images=True)
    start = time.perf_counter()
    dm.setup("fit")  # scan, data check (cached under --cache after its first run), split
    print(f"scan + check + split: {time.perf_counter() - start:.1f} s")
    n = sum(len(s) for s in dm.split_samples.values())
    start = time.perf_counter()
    prepare_shards(dm.photos, args.out, image_size=dm.hparams.image_size, decode=dm.hparams.decode,
                   store=args.store, num_workers=args.optimize_workers, folds=None)
    seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in Path(args.out).rglob("*.bin"))
    print(f"optimize store={args.store} {args.size}px, {args.optimize_workers} workers: {n} photos in "
          f"{seconds:.1f} s = {n / seconds:.1f} photos/s; shards {size / 2**30:.2f} GiB = "
          f"{size / n / 1024:.1f} KiB per photo")


def _memory_mb() -> tuple[float, float]:
    """(resident, unique) MiB of this process and its children: unique (USS) leaves out file pages
    mapped from the shards, which the kernel can drop at any time."""
    procs = [psutil.Process(), *psutil.Process().children(recursive=True)]
    infos = [p.memory_full_info() for p in procs]
    return sum(i.rss for i in infos) / 2**20, sum(i.uss for i in infos) / 2**20


def loader(args: argparse.Namespace) -> None:
    """A plain loop over one training epoch: photos/s and resident memory at every tenth."""
    if args.data == "folder":
        dm = _folder(args, cache=True)
    else:
        from product_cnn.data.streaming.datamodule import StreamingDataModule

        dm = StreamingDataModule(args.shards, image_size=args.size, batch_size=args.batch,
                                 num_workers=args.workers, cache_dir=args.cache)
    start = time.perf_counter()
    dm.setup("fit")
    print(f"setup: {time.perf_counter() - start:.1f} s")
    train = dm.train_dataloader()
    batches = len(train)
    tenths, seen, rss = [], 0, []
    start = time.perf_counter()
    for i, (images, _) in enumerate(train):
        seen += len(images)
        if (i + 1) % max(1, batches // 10) == 0:
            rss.append(_memory_mb())
            tenths.append(seen / (time.perf_counter() - start))
    seconds = time.perf_counter() - start
    where = f" ({Path(args.shards).name})" if args.data == "streaming" else " (warm cache)"
    label = f"data={args.data}{where}"
    print(f"loader {label}, batch {args.batch}, {args.workers} workers: {seen} photos in {seconds:.1f} s = "
          f"{seen / seconds:.0f} photos/s")
    for name, k in (("resident (RSS)", 0), ("unique (USS)", 1)):
        values = [m[k] for m in rss]
        print(f"{name} memory (MiB) at each tenth: {' '.join(f'{v:.0f}' for v in values)}; first to last "
              f"tenth {(values[-1] / values[0] - 1) * 100:+.1f}%")


def _train_cmd(args: argparse.Namespace, extra: list[str]) -> list[str]:
    model = {"cnn": [], "lite0": ["model=tf_efficientnet_lite0"]}[args.model]
    cache = str(args.data == "folder").lower()
    if args.data in ("folder", "folder-nocache"):
        data = ["data=folder", f"data.root={args.photos}", f"data.val_fraction={SPLIT['val_fraction']}",
                f"data.test_fraction={SPLIT['test_fraction']}", f"data.cache={cache}"]
    else:
        data = ["data=streaming", f"data.input_dir={args.shards}"]
    return [sys.executable, str(REPO / "train.py"), *data, *model, f"data.image_size={args.size}",
            f"data.batch_size={args.batch}", f"data.num_workers={args.workers}",
            f"paths.cache_dir={args.cache}", "trainer.max_epochs=1",
            f"+trainer.limit_train_batches={args.steps}", "+trainer.limit_val_batches=0",
            "+trainer.num_sanity_val_steps=0", "test=false", "confidence.fit=false",
            "callbacks.rich_progress_bar=null", "callbacks.model_summary=null",
            "+callbacks.step_timer._target_=step_timer.StepTimer",
            f"+callbacks.step_timer.out={args.timer_out}", *extra]


def train(args: argparse.Namespace, extra: list[str] | None = None, label: str = "") -> None:
    """Training steps/s of the real train.py (steps after the first 5), and the time to the first step."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    Path(args.timer_out).unlink(missing_ok=True)
    start = time.perf_counter()
    proc = subprocess.run(_train_cmd(args, extra or []), cwd=args.run_dir, env=env, capture_output=True,
                          text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    first, rate = Path(args.timer_out).read_text().split()
    print(f"train {label or args.data} model={args.model} {args.size}px batch {args.batch}, "
          f"{args.workers} workers: {float(rate):.3f} steps/s = {float(rate) * args.batch:.1f} photos/s "
          f"(steps after the 5th of {args.steps}); "
          f"first step after {float(first):.1f} s, process {wall:.0f} s")


def memory(args: argparse.Namespace) -> None:
    """Resident memory of train.py over one whole training epoch (every tenth)."""
    out = Path(args.timer_out).with_suffix(".memory")
    out.unlink(missing_ok=True)
    steps, args.steps = args.steps, "1.0"
    train(args, [f"+callbacks.step_timer.memory_out={out}"], label=f"{args.data}, one whole epoch")
    args.steps = steps
    values = [tuple(map(float, v.split("/"))) for v in out.read_text().split()]
    for name, k in (("resident (RSS)", 0), ("unique (USS)", 1), ("largest resident, main process,", 2)):
        column = [v[k] for v in values]
        print(f"train.py {name} memory (MiB) at each tenth: {' '.join(f'{c:.0f}' for c in column)}; "
              f"first to last tenth {(column[-1] / column[0] - 1) * 100:+.1f}%")


def ddp(args: argparse.Namespace) -> None:
    args.data = "streaming"
    train(args, ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"],
          label="streaming, 2-process DDP")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("section", choices=["decode", "prepare", "loader", "train", "memory", "ddp"])
    parser.add_argument("--photos", default="/work/catalogue")
    parser.add_argument("--shards", default="/work/shards256")
    parser.add_argument("--out", default="/work/shards256")
    parser.add_argument("--store", default="image", choices=["image", "bytes"])
    parser.add_argument("--data", default="streaming", choices=["folder", "folder-nocache", "streaming"])
    parser.add_argument("--model", default="cnn", choices=["cnn", "lite0"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0, help="loader workers")
    parser.add_argument("--optimize-workers", type=int, default=os.cpu_count())
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--n", type=int, default=500, help="photos for the decode rate")
    parser.add_argument("--cache", default="/work/bench_cache")
    parser.add_argument("--run-dir", default="/tmp")
    parser.add_argument("--timer-out", default="/tmp/step_timer.txt")
    args = parser.parse_args()
    print(machine())
    sections = {"decode": decode, "prepare": prepare, "loader": loader, "train": train, "memory": memory,
                "ddp": ddp}
    sections[args.section](args)


if __name__ == "__main__":
    main()
