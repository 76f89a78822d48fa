import csv
import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from PIL import Image

from product_cnn.data.datamodule import ProductDataModule
from product_cnn.data.images import load_image
from product_cnn.errors import DataError
from product_cnn.inference.predictor import Predictor, expand_inputs
from product_cnn.training.module import ProductClassifier
from tests.helpers import REPO


@pytest.fixture
def mixed_folder(tiny_run, tmp_path):
    """Good photos, a corrupt JPEG and a text file, as a user's upload folder might be."""
    folder = tmp_path / "incoming"
    folder.mkdir()
    root = tiny_run["root"]
    good = sorted((root / "Cups").glob("*.jpg"))[:3] + sorted((root / "Pens").glob("*.jpg"))[:2]
    for path in good:
        (folder / path.name.replace("img", path.parent.name)).write_bytes(path.read_bytes())
    jpeg = good[0].read_bytes()
    (folder / "broken.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (folder / "readme.txt").write_text("not a photo")
    return folder


def test_predictions_equal_the_test_time_outputs(tiny_run):
    ckpt = tiny_run["best"]
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    dm = ProductDataModule(**saved["datamodule_hyper_parameters"])
    dm.setup("test")

    class Capture(Callback):
        def __init__(self):
            self.probs: list[torch.Tensor] = []

        def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            self.probs.append(outputs["probs"])

    capture = Capture()
    model = ProductClassifier(**saved["hyper_parameters"])
    L.Trainer(accelerator="cpu", logger=False, callbacks=[capture], enable_progress_bar=False).test(
        model, datamodule=dm, ckpt_path=str(ckpt), verbose=False)
    expected = torch.cat(capture.probs)

    predictor = Predictor.from_checkpoint(ckpt, device="cpu", batch_size=4)
    paths = [p for p, _ in dm.split_samples["test"]]
    results = predictor.predict(paths, topk=3)
    got = torch.tensor([[dict(r.topk)[name] for name in predictor.class_names] for r in results])
    assert torch.allclose(got, expected, atol=1e-6)
    assert [r.category for r in results] == [predictor.class_names[i] for i in expected.argmax(1)]

    # PIL images go through the same preprocessing as paths
    with Image.open(paths[0]) as image:
        from_pil = predictor.predict(image.copy(), topk=3)[0]
    assert [n for n, _ in from_pil.topk] == [n for n, _ in results[0].topk]
    assert [p for _, p in from_pil.topk] == pytest.approx([p for _, p in results[0].topk], abs=1e-6)
    assert from_pil.source == "<image 0>"


def test_predict_cli_reports_bad_files_and_sorts_copies(tiny_run, mixed_folder, tmp_path):
    sorted_dir = tmp_path / "sorted"
    before = {p.name: p.read_bytes() for p in mixed_folder.iterdir()}
    proc = subprocess.run(
        [sys.executable, str(REPO / "predict.py"), f"ckpt_path={tiny_run['best']}", f"inputs={mixed_folder}",
         f"sort_into={sorted_dir}", "device=cpu", f"hydra.run.dir={tmp_path}/out"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]  # some inputs failed
    rows = list(csv.DictReader((tmp_path / "out" / "predictions.csv").open()))
    assert len(rows) == 6  # readme.txt is not an image: skipped with a note, not a failed photo
    bad = {r["path"].split("/")[-1]: r["error"] for r in rows if r["error"]}
    assert set(bad) == {"broken.jpg"}
    good = [r for r in rows if not r["error"]]
    assert len(good) == 5
    assert all(r["category"] in {"Bags", "Cups", "Pens"} and 0 < float(r["confidence"]) <= 1 for r in good)
    assert all(r["top1_category"] == r["category"] for r in good)
    log = (tmp_path / "out" / "predict.log").read_text()
    assert "Classified 5 of 6 file(s); 1 could not be read" in log
    assert "Skipped 1 file(s) that are not images" in log and "readme.txt" in log
    copies = sorted(p.name for p in sorted_dir.rglob("*.jpg"))
    assert len(copies) == 5 and "broken.jpg" not in copies
    for r in good:  # each copy sits under its predicted category
        assert (sorted_dir / r["category"] / r["path"].split("/")[-1]).is_file()
    assert {p.name: p.read_bytes() for p in mixed_folder.iterdir()} == before  # originals untouched


def test_json_output_and_globs(tiny_run, mixed_folder, tmp_path):
    from product_cnn.inference.results import write_predictions

    files = expand_inputs(str(mixed_folder / "*.jpg"))
    assert len(files) == 6 and not any(f.endswith(".txt") for f in files)
    results = Predictor.from_checkpoint(tiny_run["best"], device="cpu").predict(files, topk=2)
    out = write_predictions(results, tmp_path / "p.json", topk=2)
    data = json.loads(out.read_text())
    assert len(data) == 6 and sum(1 for d in data if d["error"]) == 1
    assert all(len(d["topk"]) == 2 for d in data if not d["error"])


def test_a_named_file_that_is_not_an_image_is_still_an_error(tiny_run, mixed_folder):
    files = expand_inputs([mixed_folder / "readme.txt", mixed_folder])
    assert files[0].endswith("readme.txt") and sum(f.endswith(".txt") for f in files) == 1
    result = Predictor.from_checkpoint(tiny_run["best"], device="cpu").predict(files[:1])[0]
    assert not result.ok and "not an image" in result.error


def test_missing_inputs_are_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        expand_inputs(tmp_path / "nope")
    with pytest.raises(DataError, match="no files match"):
        expand_inputs(str(tmp_path / "*.jpg"))
    (tmp_path / "notes.txt").write_text("not a photo")
    with pytest.raises(DataError, match="no image files in"):
        expand_inputs(tmp_path)


def test_bf16_inference_keeps_the_answers_within_the_reported_tolerance(tiny_run):
    """docs/performance.md: on slash5 (fine-tuned Lite0) bf16 changed 1 top-1 of 477 (a near tie) and
    no probability by more than 0.15 (99% of photos under 0.04)."""
    photos = sorted(tiny_run["root"].rglob("*.jpg"))
    fp32 = Predictor.from_checkpoint(tiny_run["best"], device="cpu", precision="32").predict(photos, topk=3)
    bf16 = Predictor.from_checkpoint(tiny_run["best"], device="cpu", precision="bf16").predict(photos, topk=3)
    assert Predictor.from_checkpoint(tiny_run["best"], device="cpu", precision="bf16").precision == "bf16"
    diffs = []
    for a, b in zip(fp32, bf16, strict=True):
        pa, pb = dict(a.topk), dict(b.topk)
        diffs.append(max(abs(pa[c] - pb.get(c, 0.0)) for c in pa))
        if a.topk[0][1] - a.topk[1][1] > 0.1:  # not a near tie: the same answer
            assert a.topk[0][0] == b.topk[0][0]
    assert max(diffs) <= 0.15 and np.percentile(diffs, 99) <= 0.05
    assert max(diffs) > 0  # it did run in bf16


def test_auto_precision_follows_the_checkpoint():
    from product_cnn.errors import ProductCNNError
    from product_cnn.inference.predictor import resolve_inference_precision

    native = {"avx2", "avx512_bf16"}
    assert resolve_inference_precision("auto", "cpu", native, trained="bf16")[0] == "bf16"
    assert resolve_inference_precision("auto", "cpu", {"avx2", "amx_bf16"}, trained="bf16")[0] == "bf16"
    assert resolve_inference_precision("auto", "cpu", {"avx2", "avx512f"}, trained="bf16")[0] == "32"
    precision, why = resolve_inference_precision("auto", "cpu", native, trained="32")
    assert precision == "32" and "trained and tested in fp32" in why
    assert resolve_inference_precision("bf16", "cpu", native, trained="32") == ("bf16", None)  # asked for
    assert resolve_inference_precision("32", "cpu", native, trained="bf16") == ("32", None)
    with pytest.raises(ProductCNNError, match="precision='16' is not one of auto, 32, bf16"):
        resolve_inference_precision("16", "cpu")


@pytest.fixture
def bf16_checkpoint(tiny_run, tmp_path):
    """tiny_run's checkpoint as if trained with trainer.precision=bf16-mixed."""
    checkpoint = torch.load(tiny_run["best"], map_location="cpu", weights_only=False)
    checkpoint["precision"] = "bf16-mixed"
    path = tmp_path / "bf16.ckpt"
    torch.save(checkpoint, path)
    return path


def test_a_checkpoint_predicts_in_the_precision_it_was_trained_in(tiny_run, bf16_checkpoint, monkeypatch):
    """fp32-trained: fp32 under auto even on a CPU with native bf16 (the fp32 forward within 1e-5);
    bf16-trained: bf16 where native, fp32 where bf16 would be emulated."""
    from product_cnn.inference.bn_fold import fold_batchnorm
    from product_cnn.inference.loading import load_network
    from product_cnn.models import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    photos = sorted(tiny_run["root"].rglob("*.jpg"))[:16]
    fp32 = Predictor.from_checkpoint(tiny_run["best"], device="cpu")
    assert fp32.precision == "32"
    loaded = load_network(tiny_run["best"])
    batch = torch.stack([load_image(p, 64) for p in photos])
    with torch.no_grad():
        forward = torch.softmax(loaded.net(batch.float() / 255) / loaded.info.temperature, dim=1)
    torch.testing.assert_close(fp32.probabilities(batch), forward, atol=1e-5, rtol=0)
    with torch.no_grad():
        folded = torch.softmax(fold_batchnorm(loaded.net)(batch.float() / 255) / loaded.info.temperature, 1)
    torch.testing.assert_close(folded, forward, atol=1e-5, rtol=0)
    assert Predictor.from_checkpoint(str(bf16_checkpoint), device="cpu").precision == "bf16"
    both = Predictor.from_checkpoint([str(bf16_checkpoint), tiny_run["best"]], device="cpu")
    assert both.precision == "32"  # an ensemble: bf16 only when every member was trained in it
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2"})
    assert Predictor.from_checkpoint(str(bf16_checkpoint), device="cpu").precision == "32"


def test_an_export_runs_in_the_precision_of_its_checkpoint(bf16_checkpoint, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    from product_cnn.inference.export import export
    from product_cnn.inference.exported import export_precision
    from product_cnn.models import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    xml = export(bf16_checkpoint, "openvino", tmp_path / "m.xml")
    assert json.loads((tmp_path / "m.xml.json").read_text())["precision"] == "bf16"
    assert export_precision(xml, "auto", "bf16")[0] == "bf16"
    assert export_precision(xml, "auto", "32")[0] == "32"
    assert export_precision(tmp_path / "m.onnx", "auto", "bf16")[0] == "32"  # ONNX Runtime: fp32 on CPU
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2"})
    assert export_precision(xml, "auto", "bf16")[0] == "32"


def test_predict_py_on_a_checkpoint_imports_no_lightning(tiny_run, tmp_path):
    """predict.py on a .ckpt: the network is rebuilt from models/, without the training stack."""
    import csv
    import subprocess
    import sys

    out = tmp_path / "p.csv"
    script = ("import runpy, sys\n"
              f"sys.argv = ['predict.py', 'ckpt_path={tiny_run['best']}', 'inputs={tiny_run['root']}',"
              f" 'output={out}', 'runtime=torch', 'hydra.run.dir={tmp_path / 'run'}']\n"
              "try:\n    runpy.run_path('predict.py', run_name='__main__')\n"
              "finally:\n    print(sorted({m.split('.')[0] for m in sys.modules} & {'lightning', "
              "'pytorch_lightning', 'torchmetrics'}))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[2], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert len(list(csv.DictReader(out.open()))) == 60
