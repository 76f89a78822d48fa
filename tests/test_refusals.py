"""What must be refused: pickled code in checkpoints, checkpoints of other models, config typos."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from product_cnn.errors import CheckpointError
from product_cnn.inference.predictor import Predictor
from product_cnn.models.checkpoint import read_checkpoint
from product_cnn.tasks import train
from tests.helpers import REPO, make_tree


class Payload:
    """Unpickling this runs ``touch <marker>``: what an attacker's checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def evil_checkpoint(tiny_run, tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "PWNED"
    checkpoint = torch.load(tiny_run["run"] / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["callbacks"] = {"innocent": Payload(marker)}
    path = tmp_path / "evil.ckpt"
    torch.save(checkpoint, path)
    # the payload is real: loading without weights_only runs it
    probe = tmp_path / "probe.ckpt"
    torch.save({"x": Payload(tmp_path / "PROBE")}, probe)
    torch.load(probe, weights_only=False)
    assert (tmp_path / "PROBE").exists()
    return path, marker


def test_malicious_checkpoint_is_refused_everywhere(evil_checkpoint, tiny_run, train_cfg):
    path, marker = evil_checkpoint
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} was refused: it holds objects"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="was refused"):
        Predictor.from_checkpoint(path)
    cfg = train_cfg("data=folder", f"data.root={tiny_run['root']}", f"ckpt_path={path}")
    with pytest.raises(CheckpointError, match="was refused"):
        train(cfg)  # resume
    proc = subprocess.run([sys.executable, str(REPO / "eval.py"), f"ckpt_path={path}",
                           f"hydra.run.dir={path.parent / 'eval'}"],
                          cwd=path.parent, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert f"error: checkpoint {path} was refused" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists(), "the pickled payload ran"


def test_truncated_checkpoint_is_named(tiny_run, tmp_path):
    data = (tiny_run["run"] / "checkpoints" / "last.ckpt").read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"checkpoint {cut} cannot be read: truncated"):
        read_checkpoint(cut)


def test_resume_on_other_classes_or_another_model_is_one_line(tiny_run, train_cfg, tmp_path):
    last = tiny_run["run"] / "checkpoints" / "last.ckpt"
    other = make_tree(tmp_path / "other", {"Bags": 10, "Lamps": 10, "Pens": 10})
    cfg = train_cfg("data=folder", f"data.root={other}", f"ckpt_path={last}")
    with pytest.raises(CheckpointError, match=r"trained on classes \['Bags', 'Cups', 'Pens'\].*'Lamps'"):
        train(cfg)
    # same classes, another input size: the dense layer does not fit
    cfg = train_cfg("data=folder", f"data.root={tiny_run['root']}", "data.image_size=48",
                    f"ckpt_path={last}")
    with pytest.raises(CheckpointError, match=r"holds weights of another model: net.classifier.0.weight"):
        train(cfg)


def test_a_weights_only_file_is_not_a_training_state(tiny_run, train_cfg, tmp_path):
    checkpoint = torch.load(tiny_run["best"], weights_only=True)
    slim = {k: checkpoint[k] for k in ("state_dict", "hyper_parameters")}
    path = tmp_path / "slim.ckpt"
    torch.save(slim, path)
    cfg = train_cfg("data=folder", f"data.root={tiny_run['root']}", f"ckpt_path={path}")
    with pytest.raises(CheckpointError, match="holds weights only"):
        train(cfg)


@pytest.mark.parametrize(("override", "message"), [
    ("trainer.max_epoch=3", "Could not override 'trainer.max_epoch'"),
    ("trainer=gpuu", "Could not find 'trainer/gpuu'"),
    ("model.dropuot=0.2", "Could not override 'model.dropuot'"),
])
def test_config_typos_fail_before_any_data_is_read(tmp_path, override, message):
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "data=folder", f"data.root={tmp_path}/nowhere", override,
         f"hydra.run.dir={tmp_path}/out"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1
    assert message in proc.stderr
    assert "nowhere" not in proc.stderr + proc.stdout  # failed before looking at the data
    assert not (tmp_path / "out").exists()
