"""extend=: a new category added to a trained checkpoint, the old classes kept at their indices."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch

from product_cnn.data.images import load_image
from product_cnn.errors import ProductCNNError
from product_cnn.inference.predictor import Predictor
from product_cnn.models.checkpoint import read_checkpoint
from product_cnn.tasks import train
from tests.helpers import FAST, PALETTE, compose_cfg, make_tree, write_image

PROBE = [*FAST, "experiment=probe", "data.image_size=32"]


def _run(root: Path, out: Path, cache: Path, *overrides: str, caplog) -> tuple[Path, int, int]:
    """A probe run; (its checkpoint, training photos, of them embedded now rather than cached)."""
    cfg = compose_cfg("train", [*PROBE, f"data.root={root}", *overrides], out, cache)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        train(cfg)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("Probe: features"))
    found = re.match(r"Probe: features of (\d+) training photos \((\d+) of", line)
    total, cached = int(found.group(1)), int(found.group(2))
    return Path(cfg.paths.output_dir) / "checkpoints" / "probe.ckpt", total, total - cached


def test_a_new_class_embeds_only_its_photos_and_keeps_the_old_classes_and_their_answers(tmp_path, caplog):
    root = make_tree(tmp_path / "photos", {"Bags": 10, "Cups": 10, "Pens": 10})
    cache = tmp_path / "cache"
    old, total, embedded = _run(root, tmp_path / "old", cache, caplog=caplog)
    assert embedded == total
    for i in range(10):  # the new category: a colour of its own
        write_image(root / "Mugs" / f"mug_{i:02d}.jpg", PALETTE[3], seed=7000 + i)
    new, total2, embedded2 = _run(root, tmp_path / "new", cache, f"extend={old}", caplog=caplog)
    assert 0 < embedded2 < 10 and total2 == total + embedded2  # only the new class's training photos
    messages = [r.getMessage() for r in caplog.records]
    assert any("Cups, Pens kept at their indices, Mugs added" in m for m in messages)
    assert any(m.startswith("Old classes' test accuracy") for m in messages)
    names = read_checkpoint(new)["hyper_parameters"]["class_names"]
    assert names == ["Bags", "Cups", "Pens", "Mugs"]  # the old indices, the new class last
    report = (tmp_path / "new" / "extension.md").read_text()
    assert "Added: Mugs" in report and "Bags |" in report
    before_all = float(re.search(r"All old classes: ([0-9.]+) before", report).group(1))
    assert before_all >= 0.9  # the old checkpoint, run as its own test report runs it
    photos = sorted(p for p in root.glob("*/*.jpg") if p.parent.name != "Mugs")
    batch = torch.stack([load_image(p, 32) for p in photos])
    before = Predictor.from_checkpoint(old, device="cpu", precision="32").probabilities(batch)
    after = Predictor.from_checkpoint(new, device="cpu", precision="32").probabilities(batch)
    assert torch.equal(before.argmax(1), after.argmax(1))  # every old photo keeps its answer...
    assert float((before - after[:, :3]).abs().mean()) < 0.1  # ...and nearly its probabilities
    mugs = torch.stack([load_image(p, 32) for p in sorted((root / "Mugs").glob("*.jpg"))])
    assert float((Predictor.from_checkpoint(new, device="cpu").probabilities(mugs).argmax(1) == 3)
                 .float().mean()) >= 0.8


def test_extend_refuses_what_would_remap_classes_in_one_line(tmp_path, caplog):
    root = make_tree(tmp_path / "photos", {"Bags": 8, "Cups": 8, "Pens": 8})
    old, _, _ = _run(root, tmp_path / "old", tmp_path / "cache", caplog=caplog)
    cases = []
    lower = make_tree(tmp_path / "lower", {"Bags": 8, "cups": 8, "Pens": 8})
    cases.append(([f"data.root={lower}"], r"folder cups/ and the checkpoint's class Cups differ only"))
    fewer = make_tree(tmp_path / "fewer", {"Bags": 8, "Pens": 8, "Mugs": 8})
    cases.append(([f"data.root={fewer}"], r"has no folder for Cups, class\(es\) of extend="))
    cases.append(([f"data.root={root}", "data.image_size=48"], r"takes 32 px images, data.image_size=48"))
    cases.append(([f"data.root={root}", f"ckpt_path={old}"], r"extend= and ckpt_path= exclude each other"))
    for overrides, error in cases:
        cfg = compose_cfg("train", [*PROBE, *overrides, f"extend={old}"], tmp_path / "x", tmp_path / "cache")
        with pytest.raises(ProductCNNError, match=error):
            train(cfg)


def test_a_fine_tuned_network_keeps_its_weights_and_old_output_rows():
    from product_cnn.models.networks import build_network
    from product_cnn.training.extend import Extension

    old = build_network("keras_cnn", 3, 32)
    new = build_network("keras_cnn", 4, 32)

    class Holder(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

    checkpoint = {"state_dict": dict(Holder(old).state_dict())}
    Extension("old.ckpt", ["a", "b", "c"], ["d"], checkpoint).load_into(Holder(new))
    for key, value in old.state_dict().items():
        mine = new.state_dict()[key]
        assert torch.equal(mine, value) if mine.shape == value.shape else torch.equal(mine[:3], value)
