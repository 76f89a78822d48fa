"""runtime=auto: a checkpoint runs on the fastest exact runtime installed (its export, cached by the
checkpoint's hash), with the checkpoint's own probabilities and gate decisions; torch otherwise."""

from __future__ import annotations

import csv
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from product_cnn.errors import ProductCNNError
from product_cnn.inference.predictor import Predictor
from tests.helpers import compose_cfg


@pytest.fixture(scope="module")
def inputs(tiny_run, tmp_path_factory):
    """The tiny run's photos plus one from outside its categories (a black-and-white checkerboard)."""
    folder = tmp_path_factory.mktemp("inputs")
    shutil.copytree(tiny_run["root"], folder / "shop")
    board = (np.indices((64, 64)).sum(0) // 8 % 2 * 255).astype(np.uint8)
    Image.fromarray(board, "L").convert("RGB").save(folder / "outside.jpg")
    return folder


def _predict(ckpt, inputs, tmp_path, name, *extra):
    from product_cnn.tasks import predict

    out = tmp_path / f"{name}.csv"
    cfg = compose_cfg("predict", [f"ckpt_path={ckpt}", f"inputs={inputs}", f"output={out}", "precision=auto",
                                  *extra], tmp_path / name, tmp_path / "cache")
    assert predict(cfg) == 0
    return {r["path"]: r for r in csv.DictReader(out.open())}


def _exports(tmp_path):
    return sorted((tmp_path / "cache" / "exports").glob("*.xml"))


def test_the_default_runtime_answers_as_the_checkpoint_in_pytorch(tiny_run, inputs, tmp_path, caplog):
    pytest.importorskip("openvino")
    with caplog.at_level(logging.INFO, logger="product_cnn.inference.runtimes"):
        auto = _predict(tiny_run["best"], inputs, tmp_path, "auto")
    assert "Runtime openvino: the fastest exact runtime installed" in caplog.text
    torch_rows = _predict(tiny_run["best"], inputs, tmp_path, "torch", "runtime=torch")
    assert auto.keys() == torch_rows.keys() and len(auto) == 61
    verdicts = [r["category"] for r in torch_rows.values()]
    assert "unknown" in verdicts and verdicts.count("unknown") < 10  # the gate is at work, not everywhere
    for path, row in auto.items():
        want = torch_rows[path]
        assert row["category"] == want["category"] and row["top1_category"] == want["top1_category"]
        assert float(row["top1_prob"]) == pytest.approx(float(want["top1_prob"]), abs=1e-4)
        assert float(row["similarity"]) == pytest.approx(float(want["similarity"]), abs=1e-4)


def test_the_export_cache_is_reused_and_a_changed_checkpoint_gets_its_own(tiny_run, inputs, tmp_path):
    pytest.importorskip("openvino")
    _predict(tiny_run["best"], inputs, tmp_path, "first")
    (made,) = _exports(tmp_path)
    stamp = made.stat().st_mtime_ns
    _predict(tiny_run["best"], inputs, tmp_path, "second")
    assert _exports(tmp_path) == [made] and made.stat().st_mtime_ns == stamp  # found again
    changed = tmp_path / "changed.ckpt"
    checkpoint = torch.load(tiny_run["best"], map_location="cpu", weights_only=False)
    name = next(k for k in checkpoint["state_dict"] if k.endswith("weight"))
    checkpoint["state_dict"][name] = checkpoint["state_dict"][name] * 1.5
    torch.save(checkpoint, changed)
    rows = _predict(changed, inputs, tmp_path, "changed")
    assert len(_exports(tmp_path)) == 2  # its own export, not the first one's answers
    want = Predictor.from_checkpoint(str(changed), device="cpu").predict(list(rows))
    assert [r["category"] for r in rows.values()] == [p.category for p in want]


def test_without_an_exact_runtime_installed_it_runs_in_pytorch(tiny_run, inputs, tmp_path, caplog,
                                                               monkeypatch):
    from product_cnn.inference import runtimes

    monkeypatch.setattr(runtimes, "installed", lambda name: False)
    with caplog.at_level(logging.INFO, logger="product_cnn.inference.runtimes"):
        rows = _predict(tiny_run["best"], inputs, tmp_path, "fallback")
    lines = [r.getMessage() for r in caplog.records if r.name == "product_cnn.inference.runtimes"]
    assert lines == ['Runtime torch: neither OpenVINO nor ONNX Runtime is installed '
                     '(pip install -e ".[export]" for 2-3x)']
    assert not (tmp_path / "cache" / "exports").exists() and len(rows) == 61
    with pytest.raises(ProductCNNError, match=r"runtime=openvino is not installed: pip install"):
        _predict(tiny_run["best"], inputs, tmp_path, "asked", "runtime=openvino")


def test_a_network_that_does_not_export_runs_in_pytorch(tiny_run, inputs, tmp_path, caplog, monkeypatch):
    from product_cnn.inference import export

    def refuse(*args, **kwargs):
        raise RuntimeError("unsupported operator\nmore detail")

    monkeypatch.setattr(export, "export", refuse)
    with caplog.at_level(logging.INFO, logger="product_cnn.inference.runtimes"):
        rows = _predict(tiny_run["best"], inputs, tmp_path, "noexport")
    assert "Runtime torch: the checkpoint does not export to " in caplog.text
    assert "unsupported operator)" in caplog.text and len(rows) == 61
    with pytest.raises(RuntimeError, match="unsupported operator"):  # asked for: no silent fallback
        _predict(tiny_run["best"], inputs, tmp_path, "asked", "runtime=onnxruntime")


@pytest.mark.parametrize(("overrides", "message"), [
    (["runtime=onnx"], "runtime='onnx' is not one of auto, torch, openvino, onnxruntime"),
    (["runtime=openvino", "ckpt_path=[a.ckpt,b.ckpt]"], "runtime=openvino takes one checkpoint"),
])
def test_bad_runtime_options_are_one_line(tiny_run, inputs, tmp_path, overrides, message):
    with pytest.raises(ProductCNNError, match=message.replace("[", r"\[")):
        _predict(tiny_run["best"], inputs, tmp_path, "bad", *overrides)
