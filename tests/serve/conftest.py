"""The server the API and page tests share (one process for the package), and the photos they send."""

from pathlib import Path

import pytest

from tests.serve.server import KEY, Server


@pytest.fixture(scope="package")
def server(tiny_run, tmp_path_factory):
    running = Server(tmp_path_factory.mktemp("serve"), f"ckpt_path={tiny_run['best']}", "device=cpu",
                     "max_batch_size=8", env={"PRODUCT_CNN_API_KEY": KEY})
    yield running
    running.stop()


@pytest.fixture(scope="package")
def photos(tiny_run) -> list[Path]:
    root = tiny_run["root"]
    return sorted(root.glob("*/*.jpg"))[::4]
