"""Load test of serve.py: throughput and latency against offline prediction, then a soak with bad input.

    python bench/serve_load.py --ckpt best.ckpt [--photos ../shared/data/slash5] [--clients 1,8,32]

Starts ``serve.py`` on a free local port (traffic goes only there, bounded in count and time),
once with dynamic batching (``max_batch_size=8``) and once without (``max_batch_size=1``), and
for each number of concurrent clients sends ``--requests`` single-photo requests (each client a
thread with its own connection), printing images/s and p50/p95/p99 latency. The baselines, on the
same machine and photos: ``Predictor.predict`` over the files (decoding included, batch 32) and
one photo's compute time (already decoded, batch 1) and the time to decode one upload. Then
``--soak`` mixed requests, a tenth of them bad (random bytes, truncated JPEGs, empty files):
counts 5xx answers, answers that do not match their photo's offline prediction, and the server's
resident memory (all its processes) after the first 500 requests and at the end.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from common import SLASH5, machine, photo_files

from product_cnn.data.images import load_image
from product_cnn.inference.predictor import Predictor
from product_cnn.runtime import tune_malloc

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(ckpt: Path, batch: int, workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, str(REPO / "serve.py"), f"ckpt_path={ckpt}", f"port={port}",
               f"max_batch_size={batch}", "device=cpu", f"hydra.run.dir={workdir}/serve_{port}"]
    proc = subprocess.Popen(command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop(proc)
    raise SystemExit("error: the server did not start within 2 minutes")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().split(")")[-1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def percentiles(values: list[float]) -> str:
    q = statistics.quantiles(values, n=100)
    return f"{1000 * q[49]:7.1f} {1000 * q[94]:7.1f} {1000 * q[98]:7.1f}"


def load(url: str, photos: list[tuple[Path, bytes]], clients: int,
         requests: int) -> tuple[float, list[float]]:
    def worker(indices: list[int]) -> list[float]:
        latencies = []
        with httpx.Client(timeout=120) as client:
            for i in indices:
                path, data = photos[i % len(photos)]
                start_time = time.perf_counter()
                response = client.post(f"{url}/predict", files={"file": (path.name, data, "image/jpeg")})
                latencies.append(time.perf_counter() - start_time)
                response.raise_for_status()
        return latencies

    shares = [list(range(c, requests, clients)) for c in range(clients)]
    begin = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [x for part in pool.map(worker, shares) for x in part]
    return requests / (time.perf_counter() - begin), latencies


def soak(url: str, pid: int, photos: list[tuple[Path, bytes]], expected: dict[str, tuple[str, float]],
         count: int, clients: int = 8) -> None:
    rng = random.Random(0)
    kinds = ["good"] * 9 + ["bad"]
    plan = [(rng.choice(kinds), rng.randrange(len(photos)), rng.randrange(3)) for _ in range(count)]
    server_errors = wrong = bad_refused = 0
    memory: dict[str, float] = {}

    def one(client: httpx.Client, item: tuple[str, int, int]) -> tuple[str, int, dict | None, str]:
        kind, index, how = item
        path, data = photos[index]
        if kind == "bad":
            data = [os.urandom(2048), data[: len(data) // 3], b""][how]
        response = client.post(f"{url}/predict", files={"file": (path.name, data, "image/jpeg")})
        is_json = response.headers.get("content-type", "").startswith("application/json")
        body = response.json() if is_json else None
        return kind, response.status_code, body, str(path)

    def run(items: list[tuple[str, int, int]]) -> list[tuple[str, int, dict | None, str]]:
        with httpx.Client(timeout=120) as client:
            return [one(client, item) for item in items]

    for label, part in (("after 500", plan[:500]), ("at the end", plan[500:])):
        with ThreadPoolExecutor(clients) as pool:
            chunks = pool.map(run, [part[c::clients] for c in range(clients)])
            results = [r for chunk in chunks for r in chunk]
        for kind, status, body, path in results:
            server_errors += status >= 500
            if kind == "good":
                want = expected[path]
                wrong += not (status == 200 and body and body["category"] == want[0]
                              and abs(body["confidence"] - want[1]) < 1e-5)
            else:
                bad_refused += 400 <= status < 500
        memory[label] = rss_mib(pid)
    bad = sum(kind == "bad" for kind, _, _ in plan)
    growth = 100 * (memory["at the end"] / memory["after 500"] - 1)
    print(f"soak: {count} requests, {bad} bad: 5xx answers {server_errors}, bad ones refused with a 4xx "
          f"{bad_refused}/{bad}, good answers not matching their photo {wrong}; server RSS "
          f"{memory['after 500']:.0f} MiB after 500, {memory['at the end']:.0f} MiB at the end "
          f"({growth:+.1f}%)",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--photos", type=Path, default=SLASH5)
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--requests", type=int, default=320)
    parser.add_argument("--batching", choices=("both", "on", "off"), default="both")
    parser.add_argument("--soak", type=int, default=5000, help="mixed requests after the load runs (0: none)")
    args = parser.parse_args()
    images = photo_files(args.photos)
    photos = [(Path(p), Path(p).read_bytes()) for p in images]
    print(f"# {machine()}; {len(photos)} photos from {args.photos}", flush=True)

    tune_malloc()  # the offline baseline as predict.py runs it (the server's workers tune their own)
    predictor = Predictor.from_checkpoint(args.ckpt, device="cpu", batch_size=32)
    predictor.predict(images[:32])  # warm-up
    begin = time.perf_counter()
    offline = predictor.predict(images)
    offline_rate = len(images) / (time.perf_counter() - begin)
    expected = {str(p.source): (p.category, p.confidence) for p in offline}
    one = load_image(images[0], predictor.image_size)[None]
    predictor.probabilities(one)
    single = []
    for _ in range(30):
        begin = time.perf_counter()
        predictor.probabilities(one)
        single.append(time.perf_counter() - begin)
    compute = statistics.median(single)
    decode = []
    for _, data in photos[:100]:
        begin = time.perf_counter()
        load_image(data, predictor.image_size)
        decode.append(time.perf_counter() - begin)
    decode_ms = 1000 * statistics.median(decode)
    print(f"offline Predictor.predict (decoding included, batch 32): {offline_rate:.1f} img/s; "
          f"one photo's compute (decoded, batch 1): {1000 * compute:.1f} ms; "
          f"decoding one upload (median of {len(decode)}): {decode_ms:.1f} ms", flush=True)

    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"serve_load_{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    modes = {"both": (8, 1), "on": (8,), "off": (1,)}[args.batching]
    print(f"{'batching':10} {'clients':>7} {'img/s':>8} {'vs offline':>10} "
          f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7}")
    for batch in modes:
        proc, url = start(args.ckpt, batch, workdir)
        try:
            load(url, photos, 1, 16)  # warm-up
            for clients in (int(c) for c in args.clients.split(",")):
                rate, latencies = load(url, photos, clients, args.requests)
                label = f"on ({batch})" if batch > 1 else "off"
                print(f"{label:10} {clients:7d} {rate:8.1f} {rate / offline_rate:9.0%} "
                      f"{percentiles(latencies)}", flush=True)
            if batch == modes[0] and args.soak:
                soak(url, proc.pid, photos, expected, args.soak)
        finally:
            stop(proc)
    print(f"goals: at 32 clients >= 80% of offline; at 1 client p95 <= 2x one photo's compute "
          f"({2000 * compute:.1f} ms; with decoding, 2x is {2 * (1000 * compute + decode_ms):.1f} ms)",
          flush=True)


if __name__ == "__main__":
    main()
