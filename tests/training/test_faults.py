"""Faults: kill and resume, Ctrl-C/SIGTERM, interrupted and failing checkpoint writes, full disk."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from product_cnn.errors import CheckpointError, ProductCNNError
from product_cnn.models.checkpoint import read_checkpoint
from product_cnn.tasks import train
from product_cnn.training.checkpoint_io import AtomicCheckpointIO
from product_cnn.training.outdir import check_writable
from tests.helpers import NO_SAME_PHOTO, REPO, make_tree

TINY = ["data=folder", NO_SAME_PHOTO, "data.image_size=32", "data.batch_size=8", "trainer.accelerator=cpu",
        "callbacks.rich_progress_bar=null", "callbacks.model_summary=null"]


def _start(tmp_path: Path, run: str, *overrides: str, tiny: list[str] = TINY) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *tiny, f"paths.cache_dir={tmp_path / 'cache'}",
         f"hydra.run.dir={tmp_path / run}", *overrides],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a shell that starts jobs in the background ignores SIGINT for them; Ctrl-C does not
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended before {path} appeared:\n{proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.02)


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "photos", {"Bags": 12, "Cups": 12, "Pens": 12})


def test_sigkill_then_resume_ends_like_an_uninterrupted_run(tmp_path, photos):
    args = [f"data.root={photos}", "trainer.max_epochs=4", "trainer.deterministic=true"]
    whole = _start(tmp_path, "whole", *args)
    _, err = whole.communicate(timeout=600)
    assert whole.returncode == 0, err[-3000:]

    # somewhere in the second epoch; on a fast CPU the last three epochs and the test can take
    # under 0.4 s, so a run that got to its report first is tried again with a shorter delay
    for longest in (0.4, 0.1, 0.0):
        name = f"killed_{longest}"
        killed = _start(tmp_path, name, *args)
        last = tmp_path / name / "checkpoints" / "last.ckpt"
        _wait_for(last, killed)
        time.sleep(random.uniform(0.0, longest))
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        if not (tmp_path / name / "metrics.json").exists():
            break
    assert killed.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / name / "metrics.json").exists()

    resumed = _start(tmp_path, "resume", *args, f"ckpt_path={last}")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]

    # the resumed run continued in the killed run's folder and ended where the whole run did
    a, b = tmp_path / "whole", tmp_path / name
    ckpt_a, ckpt_b = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=True) for d in (a, b))
    assert ckpt_a["epoch"] == ckpt_b["epoch"] == 3
    for key, value in ckpt_a["state_dict"].items():
        assert torch.equal(value, ckpt_b["state_dict"][key]), key
    for state_a, state_b in zip(ckpt_a["optimizer_states"][0]["state"].values(),
                                ckpt_b["optimizer_states"][0]["state"].values(), strict=True):
        assert torch.equal(state_a["exp_avg"], state_b["exp_avg"])
    report_a, report_b = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert report_a["accuracy"] == report_b["accuracy"]
    assert report_a["confusion_matrix"] == report_b["confusion_matrix"]
    losses = [[h["train/loss"] for h in c["metric_history"]] for c in (ckpt_a, ckpt_b)]
    assert losses[0] == losses[1]
    assert len(list((b / "tensorboard").glob("events.out.tfevents.*"))) >= 2  # same TensorBoard run


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 1), (signal.SIGTERM, 128 + signal.SIGTERM)])
def test_ctrl_c_and_sigterm_stop_cleanly_and_say_how_to_resume(tmp_path, photos, sig, status):
    proc = _start(tmp_path, "run", f"data.root={photos}", "trainer.max_epochs=200")
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    _wait_for(last, proc)
    time.sleep(0.3)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err[-3000:]
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"resume with: python train.py ckpt_path={last}" in log
    checkpoint = read_checkpoint(last)  # complete and loadable
    assert "optimizer_states" in checkpoint
    leftovers = [p.name for p in (tmp_path / "run").rglob(".*") if p.is_file()]
    assert not leftovers, leftovers  # no temporary half-written files
    assert not (tmp_path / "run" / "metrics.json").exists()  # no report of a test that never ran


def test_a_checkpoint_write_killed_midway_leaves_the_old_file(tmp_path):
    """SIGKILL a process that keeps rewriting a 30 MB checkpoint: the file always loads."""
    target = tmp_path / "last.ckpt"
    script = (
        "import torch, sys\n"
        "from product_cnn.training.checkpoint_io import AtomicCheckpointIO\n"
        "io = AtomicCheckpointIO()\n"
        "i = 0\n"
        "while True:\n"
        "    io.save_checkpoint({'step': i, 'w': torch.full((7_500_000,), float(i))}, sys.argv[1])\n"
        "    i += 1\n"
    )
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-c", script, str(target)])
        _wait_for(target, proc, timeout=60)
        time.sleep(random.uniform(0.05, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        saved = torch.load(target, weights_only=True)
        assert torch.all(saved["w"] == float(saved["step"])), attempt


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, target)

    def half_then_interrupt(obj, path):
        Path(path).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, target)
    assert torch.load(target, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_full_disk_while_saving_is_one_clear_error(train_cfg, photos, monkeypatch):
    def no_space(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    cfg = train_cfg("data=folder", f"data.root={photos}", "trainer.max_epochs=1")
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*last\.ckpt|cannot write "
                                              r"checkpoint .*epoch_000\.ckpt"):
        train(cfg)
    with pytest.raises(CheckpointError, match="the disk is full"):
        AtomicCheckpointIO().save_checkpoint({}, Path(cfg.paths.output_dir) / "x.ckpt")


def test_unwritable_or_full_output_dir_fails_at_start(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ProductCNNError, match=r"output directory .*a_file/run cannot be created: .*a_file "
                                              r"is not a folder"):
        check_writable(str(blocker / "run"))
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 2**20, 2**20))
    with pytest.raises(ProductCNNError, match=r"only 1 MiB free under"):
        check_writable(str(tmp_path / "run"))


def test_cli_unwritable_output_dir_is_one_line(tmp_path, photos):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *TINY, f"data.root={photos}",
         f"hydra.run.dir={blocker}/run"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"{blocker}/run" in proc.stderr


def test_resume_with_ckpt_path_last_finds_the_newest_run(tmp_path, photos, train_cfg, monkeypatch):
    from product_cnn.training.resume import find_last_checkpoint

    runs = tmp_path / "outputs" / "train"
    for name, age in (("old", 100), ("new", 0)):
        ckpt = runs / name / "checkpoints" / "last.ckpt"
        ckpt.parent.mkdir(parents=True)
        ckpt.write_bytes(b"x")
        os.utime(ckpt, (time.time() - age, time.time() - age))
    assert find_last_checkpoint(runs) == runs / "new" / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError, match=r"no run with checkpoints/last\.ckpt"):
        find_last_checkpoint(tmp_path / "empty")


@pytest.mark.slow  # about 45 s: three training runs
def test_streaming_killed_mid_epoch_resumes_with_the_remaining_samples(tmp_path, photos):
    from product_cnn.data.datamodule import ProductDataModule
    from product_cnn.data.streaming.prepare import prepare_shards

    shards = tmp_path / "shards"
    folder = ProductDataModule(root=str(photos), image_size=32, cache=False,
                               cache_dir=str(tmp_path / "cache"))
    prepare_shards(folder.photos, str(shards), image_size=32, decode="reduced", num_workers=2)
    args = ["data=streaming", f"data.input_dir={shards}", "data.batch_size=4",
            "data.checkpoint_every_n_steps=1", "trainer.max_epochs=2", "trainer.deterministic=true"]
    tiny = [a for a in TINY if not a.startswith(("data=", "data.batch_size"))]

    def start(run: str, *more: str) -> subprocess.Popen:
        return _start(tmp_path, run, *args, *more, tiny=tiny)

    whole = start("whole")
    _, err = whole.communicate(timeout=600)
    assert whole.returncode == 0, err[-3000:]
    steps = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt",
                       weights_only=True)["global_step"] // 2  # per epoch

    for attempt in range(4):  # killed at a step inside an epoch (not at its end)
        name = f"killed_{attempt}"
        killed = start(name)
        last = tmp_path / name / "checkpoints" / "last.ckpt"
        _wait_for(last, killed)
        time.sleep(0.05 * attempt)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        step = torch.load(last, weights_only=True)["global_step"]
        if step % steps and not (tmp_path / name / "metrics.json").exists():
            break
    else:
        pytest.fail("no kill landed inside an epoch")
    loops = torch.load(last, weights_only=True)["loops"]
    loader_state = loops["fit_loop"]["state_dict"]["combined_loader"][0]
    assert loader_state["num_samples_yielded"] == 4 * (step % steps)  # the loader's position is saved

    resumed = start("resume", f"ckpt_path={last}")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 2 * steps
    for key, value in a["state_dict"].items():  # the same batches, in the same order, as the whole run
        assert torch.equal(value, b["state_dict"][key]), key
    report_a, report_b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("whole", name))
    assert report_a["confusion_matrix"] == report_b["confusion_matrix"]
