"""Where in the photo the network looked: Grad-CAM heatmaps (Captum's ``LayerGradCam``) for a
checkpoint's network, overlaid on the photo.

The layer explained is the network's last spatial feature map (the last module whose output is
``(N, C, H, W)`` with ``H, W > 1``: the mirror's last block, a timm or torchvision backbone's last
stage, the last backbone of several), found by one forward pass, so every network the project
trains is covered without a table of layer names. Captum over a hand-written hook pair: it is the
PyTorch project's attribution library and also gives the other methods a user may want later.
The map is the ReLU of the gradient-weighted feature map for the target class, upsampled to the
input and scaled to [0, 1] per photo. It needs gradients: exported models (ONNX Runtime,
OpenVINO) have none, so ``predict.py explain=true`` runs the checkpoint in PyTorch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from product_cnn.atomic import atomic_path
from product_cnn.data.images import open_image, to_rgb, to_unit_float
from product_cnn.errors import ImageLoadError, ProductCNNError

OVERLAY_SIDE = 512  # the overlay's longer side (the photo is shrunk to it, never enlarged)
ALPHA = 0.45  # the heatmap's weight over the photo


def last_feature_map(net: nn.Module, image_hw: tuple[int, int]) -> nn.Module:
    """The module whose output is the network's last spatial feature map (one forward pass)."""
    found: list[nn.Module] = []

    def hook(module: nn.Module, _: tuple, output: object) -> None:
        if isinstance(output, torch.Tensor) and output.ndim == 4 and min(output.shape[-2:]) > 1:
            found.append(module)

    handles = [m.register_forward_hook(hook) for name, m in net.named_modules() if name]
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, 3, *image_hw))
    finally:
        for handle in handles:
            handle.remove()
    if not found:
        raise ProductCNNError(f"{type(net).__name__} has no spatial feature map to explain")
    return found[-1]


class Explainer:
    """Grad-CAM of ``net`` (logits for a [0, 1] batch) at its last spatial feature map."""

    def __init__(self, net: nn.Module, image_hw: tuple[int, int]) -> None:
        from captum.attr import LayerGradCam

        self.net = net.eval()
        self.layer = last_feature_map(net, image_hw)
        self.cam = LayerGradCam(self.net, self.layer)

    def maps(self, images: torch.Tensor, targets: Sequence[int]) -> torch.Tensor:
        """``(N, H, W)`` heatmaps in [0, 1] of ``targets`` (class indices) for a uint8 or [0, 1]
        batch ``(N, 3, H, W)``."""
        from captum.attr import LayerAttribution

        device = next(self.net.parameters()).device
        x = to_unit_float(images.to(device)).float().requires_grad_(True)
        with torch.enable_grad():
            cam = self.cam.attribute(x, target=[int(t) for t in targets], relu_attributions=True)
        up = LayerAttribution.interpolate(cam.detach(), tuple(x.shape[-2:]), interpolate_mode="bilinear")
        up = up[:, 0].clamp_min(0)
        peak = up.flatten(1).amax(1).clamp_min(1e-12)
        return (up / peak[:, None, None]).cpu()


def overlay(photo: str | Path | bytes | Image.Image, heatmap: torch.Tensor,
            side: int = OVERLAY_SIDE) -> Image.Image:
    """The photo (a file, its bytes or an image; upright, RGB, its longer side at most ``side``) with
    ``heatmap`` (``(H, W)`` in
    [0, 1], stretched to the photo as the network's input was) blended over it in the jet colours."""
    from matplotlib import colormaps

    if isinstance(photo, Image.Image):
        image = to_rgb(photo).copy()
    else:
        with open_image(photo) as opened:
            image = to_rgb(opened).copy()
    image.thumbnail((side, side))
    resized = torch.nn.functional.interpolate(heatmap[None, None].float(), size=(image.height, image.width),
                                              mode="bilinear", align_corners=False)[0, 0].numpy()
    colours = (colormaps["jet"](resized)[..., :3] * 255).astype(np.float32)
    blended = (1 - ALPHA) * np.asarray(image, dtype=np.float32) + ALPHA * colours
    return Image.fromarray(blended.clip(0, 255).astype(np.uint8))


def heatmap_name(source: str, taken: set[str]) -> str:
    """A PNG file name for ``source``'s overlay, unique among ``taken`` (added to it)."""
    stem = re.sub(r"[^\w.-]+", "_", Path(source).stem)[:80] or "photo"
    name, n = f"{stem}.png", 0
    while name in taken:
        n += 1
        name = f"{stem}-{n}.png"
    taken.add(name)
    return name


def _photo(item: object, size: object, decode: str) -> tuple[torch.Tensor, Image.Image | str]:
    """(the uint8 input the network sees, what the overlay is drawn on) for a predict.py input."""
    from product_cnn.data.images import load_image, pil_to_tensor

    if isinstance(item, Image.Image):
        return pil_to_tensor(item, size), item
    if hasattr(item, "load_array"):  # a shard item: its stored image is the photo
        array = item.load_array(size, decode)
        return torch.from_numpy(array), Image.fromarray(np.ascontiguousarray(array.transpose(1, 2, 0)))
    return load_image(item, size, decode=decode), str(item)


def write_heatmaps(predictor: object, predictions: Sequence[object], inputs: Sequence[object],
                   folder: str | Path) -> int:
    """An overlay PNG per classified photo in ``folder`` for its top category (held-back ones too),
    its path set on the prediction (``heatmap``); returns how many were written."""
    net = getattr(predictor, "explain_net", None)
    if net is None:
        raise ProductCNNError("explain=true needs the checkpoint in PyTorch: exported models "
                              "(ONNX Runtime, OpenVINO) have no gradients; give ckpt_path=<the .ckpt>")
    size = predictor.image_size
    explainer = Explainer(net, (size, size) if isinstance(size, int) else tuple(size))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = list(predictor.class_names)
    todo = [(p, item) for p, item in zip(predictions, inputs, strict=True) if p.ok and p.topk]
    taken: set[str] = set()
    written = 0
    for start in range(0, len(todo), predictor.batch_size):
        batch, kept = [], []
        for p, item in todo[start:start + predictor.batch_size]:
            try:
                image, photo = _photo(item, size, predictor.decode)
            except (ImageLoadError, OSError, ValueError):  # classified a moment ago, gone or changed since
                continue
            batch.append(image)
            kept.append((p, photo))
        if not kept:
            continue
        maps = explainer.maps(torch.stack(batch), [names.index(p.topk[0][0]) for p, _ in kept])
        for (p, photo), heat in zip(kept, maps, strict=True):
            path = folder / heatmap_name(p.source, taken)
            with atomic_path(path) as tmp:
                overlay(photo, heat).save(tmp, format="PNG")
            p.heatmap = str(path)
            written += 1
    return written
