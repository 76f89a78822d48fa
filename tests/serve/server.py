"""A real ``serve.py`` process for the server and page tests: start it on a free port, stop it and
its workers; the API key they use; how a photo is posted."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from product_cnn.confidence.gate import GateOptions
from tests.helpers import REPO

NO_UNKNOWN = GateOptions(unknown=False)  # a category for every photo

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python serve.py ...`` in its own process group, stopped (with its workers) at the end."""

    def __init__(self, tmp: Path, *args: str, env: dict | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"serve_{self.port}.log"
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "serve.py"), f"port={self.port}",
             f"hydra.run.dir={tmp}/run_{self.port}", *args],
            cwd=tmp, stdout=self.log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **(env or {})})
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"server did not start: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):  # what is left of its group (workers a failed
            os.killpg(self.proc.pid, signal.SIGKILL)   # shutdown orphaned, too)


def served(want) -> str | None:
    """What serve.py answers as the category for a Predictor result: null when held back."""
    return None if want.verdict else want.category


def post_file(url: str, path: Path, headers=AUTH) -> httpx.Response:
    """POST one photo file to ``url``/predict (with the API key unless ``headers`` say otherwise)."""
    with path.open("rb") as handle:
        return httpx.post(f"{url}/predict", files={"file": (path.name, handle, "image/jpeg")},
                          headers=headers, timeout=60)
