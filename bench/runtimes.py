"""predict.py against ONNX Runtime and OpenVINO on the same photos, timed as a user waits.

    python bench/runtimes.py --ckpt best.ckpt [--photos ../shared/data/slash5] [--repeats 3]
                             [--predict "batch_size=32 num_workers=1"] [--batch-sizes 1,32]

Exports the checkpoint to ONNX once (``export.py``'s code: the same network, BatchNorm folded,
softmax and temperature inside), then times whole processes, start-up included, each over
every photo of the folder, each writing a CSV of the top category:

- ``predict.py ckpt_path=<ckpt> inputs=<photos>`` plus ``--predict`` overrides (each a separate
  row when ``--predict`` is given more than once; ``ckpt_path={onnx}`` or ``ckpt_path={openvino}``
  runs predict.py on the checkpoint's ONNX or OpenVINO export instead);
- a plain ONNX Runtime script and a plain OpenVINO script (``pip install -e ".[bench]"``) on the
  exported model, with plain Pillow decoding (open, EXIF orientation, RGB, full decode, bilinear
  resize to the network's input), one batch size per row.

Prints images/s (median over ``--repeats``, min-max) and how many top-1 answers differ from the
first predict.py row's. Runs one after the other: nothing else should share the cores.
"""

from __future__ import annotations

import argparse
import csv
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import SLASH5, machine, median_spread, photo_files

ROOT = Path(__file__).resolve().parents[1]

# What a user writes around a runtime: list the photos, decode with Pillow, batch, run, write a CSV.
PEER = r'''
import csv, json, sys
import numpy as np
from PIL import Image, ImageOps

model_path, list_path, out_path, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
meta = json.load(open(model_path + ".json"))
names = meta["class_names"]
_, _, height, width = meta["input"]["shape"]
paths = open(list_path).read().split("\n")

def load(path):
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image).convert("RGB").resize((width, height), Image.BILINEAR)
        return np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0

RUN = None
{setup}
with open(out_path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["path", "category"])
    for start in range(0, len(paths), batch):
        chunk = paths[start:start + batch]
        probs = RUN(np.stack([load(p) for p in chunk]))
        for path, row in zip(chunk, probs):
            writer.writerow([path, names[int(row.argmax())]])
'''

SETUPS = {
    "onnxruntime": '''
import onnxruntime as ort
session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
RUN = lambda x: session.run(None, {"images": x})[0]
''',
    "openvino": '''
import openvino as ov
hint = "LATENCY" if batch == 1 else "THROUGHPUT"
compiled = ov.Core().compile_model(model_path, "CPU", {"PERFORMANCE_HINT": hint})
RUN = lambda x: compiled(x)[0]
''',
}


def timed_process(command: list[str], repeats: int) -> list[float]:
    """Wall seconds of each of ``repeats`` runs of ``command`` (which must succeed)."""
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        times.append(time.perf_counter() - begin)
        if done.returncode != 0:
            raise SystemExit(f"error: {shlex.join(command)} failed:\n{done.stderr[-3000:]}")
    return times


def top1(path: Path) -> dict[str, str]:
    with open(path, newline="") as f:
        return {str(Path(row["path"]).resolve()): row.get("top1_category", row["category"])
                for row in csv.DictReader(f)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--photos", type=Path, default=SLASH5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--predict", action="append", default=None,
                        help="predict.py overrides for one row (repeat for more rows)")
    parser.add_argument("--batch-sizes", default="1,32", help="the peers' batch sizes")
    parser.add_argument("--runtimes", default="onnxruntime,openvino")
    args = parser.parse_args()
    images = photo_files(args.photos)
    print(f"# {machine()}; {len(images)} photos from {args.photos}; checkpoint {args.ckpt}", flush=True)

    from product_cnn.inference.export import export

    work = Path(tempfile.mkdtemp(prefix="bench-runtimes-"))
    model = export(args.ckpt, "onnx", work / "model.onnx")
    exports = {"{onnx}": str(model), "{openvino}": str(export(args.ckpt, "openvino", work / "model.xml"))}
    (work / "photos.txt").write_text("\n".join(images))
    print(f"{'what':<60} {'img/s (whole process)':>24} {'top-1 differs':>13}", flush=True)
    reference: dict[str, str] | None = None
    for n, overrides in enumerate(args.predict or [""]):
        out = work / f"predict{n}.csv"
        extra = shlex.split(overrides)
        for key, path in exports.items():
            extra = [o.replace(key, path) for o in extra]
        ckpt = [] if any(o.startswith("ckpt_path=") for o in extra) else [f"ckpt_path={args.ckpt.resolve()}"]
        command = [sys.executable, "predict.py", *ckpt, f"inputs={args.photos.resolve()}", f"output={out}",
                   f"hydra.run.dir={work}/run{n}", *extra]
        times = timed_process(command, args.repeats)
        answers = top1(out)
        reference = reference or answers
        differs = sum(answers[p] != reference[p] for p in reference)
        print(f"{'predict.py ' + overrides:<60} {median_spread([len(images) / t for t in times]):>24} "
              f"{differs:>13}", flush=True)
    for runtime in args.runtimes.split(","):
        script = work / f"peer_{runtime}.py"  # not onnxruntime.py: it would shadow the package
        script.write_text(PEER.replace("{setup}", SETUPS[runtime]))
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            out = work / f"{runtime}{batch}.csv"
            times = timed_process([sys.executable, str(script), str(model), str(work / "photos.txt"),
                                   str(out), str(batch)], args.repeats)
            answers = top1(out)
            differs = sum(answers[p] != reference[p] for p in reference)
            print(f"{f'{runtime}, Pillow decoding, batch {batch}':<60} "
                  f"{median_spread([len(images) / t for t in times]):>24} {differs:>13}", flush=True)
    print(f"# whole-process medians (min-max); outputs in {work}; a runtime=openvino row's first run "
          "exports into the cache (the median is the warm runs')", flush=True)


if __name__ == "__main__":
    main()
