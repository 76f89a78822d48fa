"""Importing the original Keras network: same probabilities as Keras, refusals in one line.

The fixture (tests/fixtures/keras, made by make_fixture.py with real Keras 3 / TensorFlow, and
Keras 2 through tf_keras) is the original network at 64x64 with five classes and seeded random
weights, saved as .keras and .h5 (and Keras 2's .h5), with the probabilities Keras gave three
fixed inputs. Only h5py is needed here.
"""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from product_cnn.inference.predictor import Predictor
from product_cnn.models.keras_import import KerasImportError
from product_cnn.training.keras_checkpoint import import_keras
from tests.helpers import NO_SAME_PHOTO, REPO, compose_cfg, make_tree

FIXTURES = REPO / "tests" / "fixtures" / "keras"
NAMES = ["Accessories", "Artifacts", "Fashion", "Home", "Stationary"]


@pytest.fixture(scope="module")
def expected():
    data = np.load(FIXTURES / "expected.npz")
    return torch.from_numpy(data["inputs"]).permute(0, 3, 1, 2), data["probs"]  # NHWC -> NCHW


def _probabilities(ckpt: Path, images: torch.Tensor) -> np.ndarray:
    return Predictor.from_checkpoint(ckpt, device="cpu").probabilities(images).numpy()


@pytest.mark.parametrize("name", ["mirror64.keras", "mirror64.h5", "mirror64_keras2.h5"])
def test_imported_checkpoint_gives_the_keras_probabilities(name, expected, tmp_path, monkeypatch):
    from product_cnn.models import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "avx512_bf16"})  # native bf16: still fp32
    images, probs = expected
    ckpt = import_keras(FIXTURES / name, tmp_path / "k.ckpt", NAMES)
    assert Predictor.from_checkpoint(ckpt, device="cpu").precision == "32"  # precision=auto follows it
    assert np.abs(_probabilities(ckpt, images) - probs).max() < 1e-5
    saved = torch.load(ckpt, weights_only=True)
    assert saved["hyper_parameters"]["class_names"] == NAMES and saved["hyper_parameters"]["image_size"] == 64
    assert "optimizer_states" in saved and saved["epoch"] == 0  # a training checkpoint: resumable


def test_a_weights_only_file_imports_with_the_size_inferred(expected, tmp_path):
    images, probs = expected
    with zipfile.ZipFile(FIXTURES / "mirror64.keras") as archive:  # Keras 3's save_weights layout
        (tmp_path / "m.weights.h5").write_bytes(archive.read("model.weights.h5"))
    ckpt = import_keras(tmp_path / "m.weights.h5", tmp_path / "w.ckpt", NAMES)
    assert np.abs(_probabilities(ckpt, images) - probs).max() < 1e-5


def test_a_keras2_weights_only_file_imports_too(expected, tmp_path):
    """Keras 2's save_weights("x.h5"): the legacy layer groups at the root, no model config."""
    import h5py

    images, probs = expected
    with h5py.File(FIXTURES / "mirror64_keras2.h5") as source, h5py.File(tmp_path / "w2.h5", "w") as target:
        weights = source["model_weights"]
        for name in weights:
            weights.copy(weights[name], target, name=name)
        for key, value in weights.attrs.items():
            target.attrs[key] = value
    ckpt = import_keras(tmp_path / "w2.h5", tmp_path / "w2.ckpt", NAMES)
    assert np.abs(_probabilities(ckpt, images) - probs).max() < 1e-5


def test_the_imported_checkpoint_works_with_eval_predict_export_and_train(expected, tmp_path):
    from product_cnn.inference.export import export
    from product_cnn.tasks import evaluate, train

    ckpt = import_keras(FIXTURES / "mirror64.keras", tmp_path / "k.ckpt", NAMES)
    photos = make_tree(tmp_path / "photos", {name: 6 for name in NAMES})
    overrides = ["trainer.accelerator=cpu", f"ckpt_path={ckpt}", f"data.root={photos}"]
    result = evaluate(compose_cfg("eval", overrides, tmp_path / "e", tmp_path / "c"))
    report = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert report["num_samples"] == 30 and result["test/acc"] == pytest.approx(report["accuracy"])
    script = torch.jit.load(str(export(ckpt, "torchscript", tmp_path / "k.pt")))
    images, probs = expected
    assert np.abs(script(images)[0].detach().numpy() - probs).max() < 1e-5
    cfg = compose_cfg("train", ["trainer.accelerator=cpu", "data=folder", f"data.root={photos}",
                                NO_SAME_PHOTO, "data.image_size=64", "data.batch_size=8",
                                "trainer.max_epochs=1", f"ckpt_path={ckpt}",
                                "callbacks.rich_progress_bar=null"],
                      tmp_path / "t", tmp_path / "c")
    metrics = train(cfg)  # fine-tuning goes on from the Keras weights
    assert np.isfinite(metrics["train/loss"]) and 0 <= metrics["test/acc"] <= 1


def _edited_keras(tmp_path: Path, edit) -> Path:
    """A copy of the .keras fixture with its config.json changed by ``edit(layers)``."""
    with zipfile.ZipFile(FIXTURES / "mirror64.keras") as source:
        files = {name: source.read(name) for name in source.namelist()}
    config = json.loads(files["config.json"])
    edit(config["config"]["layers"])
    files["config.json"] = json.dumps(config).encode()
    path = tmp_path / "edited.keras"
    with zipfile.ZipFile(path, "w") as target:
        for name, data in files.items():
            target.writestr(name, data)
    return path


def _extra_layer(layers):
    layers.insert(-1, {**layers[-1], "config": {**layers[-1]["config"], "name": "dense_9", "units": 32}})


def _lambda(layers):
    layers[7] = {"class_name": "Lambda", "config": {"name": "lambda", "function": "os.system('echo hacked')"}}


@pytest.mark.parametrize(("edit", "message"), [
    (_extra_layer, r"layer 15 dense_9 has activation=softmax; the original network has activation=relu"
                   r"|is one more than the original network has|has units"),
    (lambda layers: layers[1]["config"].update(kernel_size=[5, 5]),
     r"layer 1 conv2d has kernel_size=\[5, 5\]; the original network has kernel_size=\[6, 6\]"),
    (lambda layers: layers[0]["config"].update(batch_shape=[None, 128, 128, 3]),
     r"the first dense layer takes 2704 inputs; at image_size \(128, 128\) .*another input size"),
    (lambda layers: layers[8]["config"].update(activation="tanh"),
     r"layer 8 dense has activation=tanh; the original network has activation=relu"),
    (_lambda, r"layer 7 lambda is a Lambda; the original network has a Flatten there"),
])
def test_another_network_is_refused_naming_the_first_difference(edit, message, tmp_path):
    path = _edited_keras(tmp_path, edit)
    with pytest.raises(KerasImportError, match=message) as info:
        import_keras(path, tmp_path / "x.ckpt", NAMES)
    assert "\n" not in str(info.value) and not (tmp_path / "x.ckpt").exists()


def test_unreadable_files_and_wrong_arguments_are_one_line(tmp_path):
    truncated = tmp_path / "cut.h5"
    truncated.write_bytes((FIXTURES / "mirror64.h5").read_bytes()[:50_000])
    text = tmp_path / "notes.keras"
    text.write_text("not a model")
    cases = [
        ((truncated, NAMES), r"cannot be read as a Keras file \(truncated or damaged\?\)"),
        ((text, NAMES), r"is neither a .keras \(zip\) nor an .h5 \(HDF5\) Keras file"),
        ((FIXTURES / "mirror64.h5", None), r"do not record class names: pass class_names=\[...\] \(5 names"),
        ((FIXTURES / "mirror64.h5", NAMES[:3]), r"has 5 outputs but 3 class_names were given"),
    ]
    for (path, names), message in cases:
        with pytest.raises(KerasImportError, match=message) as info:
            import_keras(path, tmp_path / "x.ckpt", names)
        assert "\n" not in str(info.value)
    with pytest.raises(KerasImportError, match=r"takes 64x64 inputs, not image_size=128"):
        import_keras(FIXTURES / "mirror64.keras", tmp_path / "x.ckpt", NAMES, image_size=128)


def test_cli_imports_and_refuses_in_one_line(tmp_path, expected):
    names = "[" + ",".join(NAMES) + "]"
    ok = subprocess.run([sys.executable, str(REPO / "import_keras.py"),
                         f"keras_path={FIXTURES / 'mirror64.h5'}", f"class_names={names}",
                         f"hydra.run.dir={tmp_path}/run"],
                        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    images, probs = expected
    assert np.abs(_probabilities(tmp_path / "run" / "keras_import.ckpt", images) - probs).max() < 1e-5
    bad = subprocess.run([sys.executable, str(REPO / "import_keras.py"), f"keras_path={tmp_path}/none.h5",
                          f"class_names={names}", f"hydra.run.dir={tmp_path}/bad"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert f"error: keras_path={tmp_path}/none.h5 does not exist" in bad.stderr
