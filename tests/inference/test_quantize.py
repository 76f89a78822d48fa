"""precision=int8: quantized after training, calibrated on the checkpoint's held-out photos, checked
against fp32 on them, refused in one line (no file) under the bound."""

from __future__ import annotations

import json

import pytest
import torch

from product_cnn.errors import ProductCNNError
from product_cnn.inference.export import export
from product_cnn.inference.predictor import Predictor
from product_cnn.inference.quantize import export_at

pytest.importorskip("onnxruntime")


def test_an_int8_export_is_written_with_its_agreement_and_answers_as_fp32(tiny_run, tmp_path):
    from product_cnn.inference.exported import ExportedPredictor

    path = export_at(tiny_run["best"], "onnx", tmp_path / "m.int8.onnx", precision="int8", min_agreement=0.9)
    meta = json.loads((tmp_path / "m.int8.onnx.json").read_text())
    assert meta["precision"] == "int8" and meta["int8"]["bound"] == 0.9
    assert meta["int8"]["photos"] >= 10 and meta["int8"]["top1"] >= 0.9
    photos = sorted(tiny_run["root"].rglob("*.jpg"))
    int8 = ExportedPredictor(path).predict(photos)
    fp32 = Predictor.from_checkpoint(tiny_run["best"], device="cpu").predict(photos)
    same = sum(a.topk[0][0] == b.topk[0][0] for a, b in zip(int8, fp32, strict=True))
    assert same >= 0.9 * len(photos)
    assert max(abs(a.confidence - b.confidence) for a, b in zip(int8, fp32, strict=True)) > 0  # int8 ran
    with pytest.raises(ProductCNNError, match=r"precision=int8 takes a checkpoint .* or an int8 export"):
        ExportedPredictor(export(tiny_run["best"], "onnx", tmp_path / "fp32.onnx"), precision="int8")


@pytest.fixture
def near_tie(tiny_run, tmp_path):
    """tiny_run's checkpoint with a second output row equal to the first's but for one feature, and
    the bias that splits one held-out photo exactly between what fp32 and int8 compute for that
    feature: a near tie that the int8 model decides the other way (the convolutions' int8 rounding
    does not depend on the output layer, so the first int8 model's features are the refused one's)."""
    import numpy as np

    from product_cnn.inference.exported import int8_runtime, open_session
    from product_cnn.inference.quantize import heldout_images

    images = heldout_images(tiny_run["best"]).astype(np.float32) / 255
    probe = export_at(tiny_run["best"], "onnx", tmp_path / "probe.int8.onnx", precision="int8",
                      min_agreement=0.01)
    fp32_out = open_session(export(tiny_run["best"], "onnx", tmp_path / "fp32.onnx"))(images)
    int8_features = open_session(probe, runtime=int8_runtime())(images)[1]
    first = fp32_out[0].argmax(1)
    gap = np.abs(fp32_out[1] - int8_features) * (first[:, None] == int(np.bincount(first).argmax()))
    photo, feature = np.unravel_index(gap.argmax(), gap.shape)
    assert gap[photo, feature] > 0
    top = int(first[photo])
    checkpoint = torch.load(tiny_run["best"], map_location="cpu", weights_only=False)
    state = checkpoint["state_dict"]
    weight = next(k for k in reversed(list(state)) if k.endswith("weight") and state[k].dim() == 2)
    bias = weight.removesuffix("weight") + "bias"
    other = (top + 1) % state[weight].shape[0]
    split = float(fp32_out[1][photo, feature] + int8_features[photo, feature]) / 2
    state[weight][other] = state[weight][top]
    state[weight][other, feature] += 10.0
    state[bias][other] = state[bias][top] - 10.0 * split
    path = tmp_path / "near_tie.ckpt"
    torch.save(checkpoint, path)
    return path


def test_a_bound_that_is_not_met_is_one_line_and_no_file(near_tie, tmp_path):
    output = tmp_path / "out" / "m.int8.onnx"
    output.parent.mkdir()
    with pytest.raises(ProductCNNError) as err:
        export_at(near_tie, "onnx", output, precision="int8", min_agreement=1.0)
    message = str(err.value)
    assert "\n" not in message and message.startswith("int8 agrees with fp32 on ")
    assert "held-out photos, under int8_min_agreement=1: keep fp32 (precision=auto)" in message
    assert list(output.parent.iterdir()) == []  # no model, no sidecar, no scratch folder


def test_predict_with_int8_quantizes_once_into_the_cache(tiny_run, tmp_path):
    import csv

    from product_cnn.tasks import predict
    from tests.helpers import compose_cfg

    def run(name: str, *extra: str) -> list[dict]:
        out = tmp_path / f"{name}.csv"
        cfg = compose_cfg("predict", [f"ckpt_path={tiny_run['best']}", f"inputs={tiny_run['root']}",
                                      f"output={out}", "precision=int8", *extra], tmp_path / name,
                          tmp_path / "cache")
        assert predict(cfg) == 0
        return list(csv.DictReader(out.open()))

    first = run("a", "int8_min_agreement=0.9")
    (made,) = (tmp_path / "cache" / "exports").glob("*.int8.onnx")
    stamp = made.stat().st_mtime_ns
    assert run("b", "int8_min_agreement=0.9") == first and made.stat().st_mtime_ns == stamp
    with pytest.raises(ProductCNNError, match=r"precision=int8 takes one checkpoint .*not runtime=torch"):
        run("c", "runtime=torch")
