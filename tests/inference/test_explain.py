"""Heatmaps: Grad-CAM of every network the project trains, overlays written by predict.py."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from PIL import Image

from product_cnn.errors import ProductCNNError
from product_cnn.inference.explain import Explainer, heatmap_name, overlay
from product_cnn.models.networks import build_network
from product_cnn.tasks import predict
from tests.helpers import compose_cfg

SIZE = 64


def _photos(n: int, generator: torch.Generator, quadrant: int | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Dim noise; half of them (or all, with ``quadrant``) with a bright 14-px square somewhere
    (or inside that quadrant: 0 top left, 1 top right, 2 bottom left, 3 bottom right)."""
    images = torch.rand(n, 3, SIZE, SIZE, generator=generator) * 0.3
    labels = torch.zeros(n, dtype=torch.long) if quadrant is not None else torch.arange(n) % 2
    for i in range(n):
        if quadrant is None and labels[i] == 1:
            continue
        if quadrant is None:
            top, left = (int(v) for v in torch.randint(0, SIZE - 14, (2,), generator=generator))
        else:
            top, left = (int(v) for v in torch.randint(2, SIZE // 2 - 16, (2,), generator=generator))
            top, left = top + SIZE // 2 * (quadrant // 2), left + SIZE // 2 * (quadrant % 2)
        images[i, :, top:top + 14, left:left + 14] = torch.tensor([1.0, 0.9, 0.2])[:, None, None]
    return images, labels


def test_the_heatmap_peaks_on_the_object_the_network_learned_to_see():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    net = build_network("keras_cnn", 2, SIZE)  # the mirror, trained here to tell "object" from "none"
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    for _ in range(120):
        images, labels = _photos(32, generator)
        loss = torch.nn.functional.cross_entropy(net(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():  # the mirror's Keras momentum (0.99) leaves its BatchNorm statistics behind
        for module in net.modules():  # after so few steps: estimate them over fresh batches
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None
        for _ in range(8):
            net(_photos(32, generator)[0])
    net.eval()
    test, labels = _photos(64, generator)
    assert (net(test).argmax(1) == labels).float().mean() > 0.9  # it sees the object
    explainer = Explainer(net, (SIZE, SIZE))
    for quadrant in range(4):
        photos, _ = _photos(6, generator, quadrant)
        maps = explainer.maps(photos, [0] * len(photos))
        assert maps.shape == (6, SIZE, SIZE) and float(maps.max()) == pytest.approx(1.0)
        peaks = maps.flatten(1).argmax(1)
        rows, cols = peaks // SIZE, peaks % SIZE
        found = (rows >= SIZE // 2).long() * 2 + (cols >= SIZE // 2).long()
        assert found.tolist() == [quadrant] * 6


@pytest.mark.parametrize("arch", ["keras_cnn", "tf_efficientnet_lite0", "resnet18",
                                  "tf_efficientnet_lite0+tf_efficientnet_lite1"])
def test_every_network_gets_a_heatmap_of_the_photo(arch):
    net = build_network(arch, 3, SIZE).eval()
    photos = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8)
    maps = Explainer(net, (SIZE, SIZE)).maps(photos, [0, 2])
    assert maps.shape == (2, SIZE, SIZE) and bool(((maps >= 0) & (maps <= 1)).all())
    shown = overlay(Image.new("RGB", (90, 40), (128, 128, 128)), maps[0])
    assert shown.size == (90, 40) and shown.mode == "RGB"


def test_heatmap_names_are_unique_and_safe():
    taken: set[str] = set()
    assert [heatmap_name(p, taken) for p in ["a/x y.jpg", "b/x y.jpg", "c/x y.png"]] == \
        ["x_y.png", "x_y-1.png", "x_y-2.png"]


def test_predict_explain_writes_a_readable_overlay_per_photo_linked_from_the_csv(tiny_run, tmp_path):
    photos = sorted(tiny_run["root"].glob("*/*.jpg"))[::7]
    cfg = compose_cfg("predict", [f"ckpt_path={tiny_run['best']}", f"inputs=[{','.join(map(str, photos))}]",
                                  "explain=true", "unknown=false", "min_confidence=0.9999"],
                      tmp_path / "out", tmp_path / "cache")
    assert predict(cfg) == 0
    with Path(cfg.output).open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(photos) and all(r["heatmap"] for r in rows)
    for row in rows:
        with Image.open(row["heatmap"]) as image, Image.open(row["path"]) as photo:
            assert image.format == "PNG" and image.size == photo.size  # small photos keep their size
    assert len(list((Path(cfg.output).parent / "explain").glob("*.png"))) == len(photos)
    held = sum(1 for r in rows if r["category"] == "unsure")
    page = (Path(cfg.output).parent / "review.html").read_text()  # beside each doubtful photo
    assert held > 0 and page.count('alt="where the network looked"') == held


def test_explain_with_an_exported_model_is_one_line(tiny_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from product_cnn.inference.export import export

    model = export(tiny_run["best"], "onnx", tmp_path / "m.onnx")
    photo = sorted(tiny_run["root"].glob("*/*.jpg"))[0]
    for ckpt, runtime in [(model, "auto"), (tiny_run["best"], "onnxruntime")]:
        cfg = compose_cfg("predict", [f"ckpt_path={ckpt}", f"inputs={photo}", "explain=true",
                                      f"runtime={runtime}"], tmp_path / f"out_{runtime}", tmp_path / "cache")
        with pytest.raises(ProductCNNError, match="explain=true needs the checkpoint in PyTorch"):
            predict(cfg)
