"""A new category without starting again: ``train.py extend=<checkpoint> data.root=<folder with
the new class folder added>``.

The run keeps the checkpoint's classes in their order (their output rows keep their indices) and
appends the folder's new ones (sorted); the network starts from the checkpoint's weights, the new
output rows from the model's own initialisation. With ``experiment=probe`` (or ``probe_multi``)
the head is refitted in seconds on the cached features: only the new photos are embedded. A
fine-tuned checkpoint keeps its backbone and trains on (``trainer.max_epochs``, or
``probe={c: 1.0, finetune: true}`` to fit the head first). At the end the log and
``extension.md`` say which categories were added and how the old ones' test recall moved (the old
checkpoint on the same test photos against the new one).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, open_dict

from product_cnn.atomic import write_text
from product_cnn.errors import ProductCNNError
from product_cnn.models.checkpoint import checkpoint_info, read_checkpoint

log = logging.getLogger(__name__)


@dataclass
class Extension:
    """The checkpoint a run extends, its classes and the folder's new ones."""

    ckpt_path: str
    old: list[str]
    new: list[str]
    checkpoint: dict[str, Any]  # read once: its weights start the run, its network reports the old recall

    @property
    def state(self) -> dict[str, torch.Tensor]:
        """The checkpoint's network weights (``net.*``)."""
        return {k: v for k, v in self.checkpoint["state_dict"].items() if k.startswith("net.")}

    def load_into(self, model: Any) -> None:
        """Copy the checkpoint's weights into ``model``: every tensor of the same shape, and the
        old classes' rows of the output layer (the new rows keep their initialisation)."""
        own = model.state_dict()
        for key, value in self.state.items():
            if key not in own:
                continue
            if own[key].shape == value.shape:
                own[key] = value
            elif own[key].shape[1:] == value.shape[1:] and own[key].shape[0] == len(self.old + self.new) \
                    and value.shape[0] == len(self.old):  # the output layer: one row per class
                own[key][: len(self.old)] = value
        model.load_state_dict(own)
        log.info("Extending %s: classes %s kept at their indices, %s added", self.ckpt_path,
                 ", ".join(self.old), ", ".join(self.new) or "none")

    def report(self, cfg: DictConfig, datamodule: Any) -> Path | None:
        """``extension.md``: the old classes' test recall, the old checkpoint against this run's."""
        out = Path(cfg.paths.output_dir)
        tested = out / "test_predictions.csv"
        if not tested.is_file():
            return None
        with tested.open(newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if r["label"] in self.old]
        if not rows:
            return None
        before = self._old_predictions([str(Path(datamodule.root) / r["path"]) for r in rows],
                                       datamodule.cache_dir)
        lines = [f"# Extended {self.ckpt_path}", "", f"Added: {', '.join(self.new) or 'none'}. "
                 f"The old classes on this run's {len(rows)} test photos of them (recall):", "",
                 "class | photos | before | after", "---|---|---|---"]
        total_before = total_after = 0
        for name in self.old:
            mine = [(r, b) for r, b in zip(rows, before, strict=True) if r["label"] == name]
            if not mine:
                continue
            right_before = sum(b == name for _, b in mine)
            right_after = sum(r["predicted"] == name for r, _ in mine)
            total_before, total_after = total_before + right_before, total_after + right_after
            lines.append(f"{name} | {len(mine)} | {right_before / len(mine):.3f} | "
                         f"{right_after / len(mine):.3f}")
        before_all, after_all = total_before / len(rows), total_after / len(rows)
        lines += ["", f"All old classes: {before_all:.3f} before, {after_all:.3f} after (the new classes can "
                      "take photos the old checkpoint had to file elsewhere)."]
        write_text(out / "extension.md", "\n".join(lines) + "\n")
        log.info("Old classes' test accuracy %.3f before, %.3f after adding %s: %s", before_all, after_all,
                 ", ".join(self.new) or "nothing", out / "extension.md")
        return out / "extension.md"

    @torch.no_grad()
    def _old_predictions(self, paths: list[str], cache_dir: str, batch_size: int = 32) -> list[str]:
        """The old checkpoint's top class for each photo (as its test report computes it): from
        the feature cache where it holds the old backbone's features of them all (a probe's)."""
        from product_cnn.data.images import load_image, to_unit_float
        from product_cnn.models.photo_features import cached_features
        from product_cnn.training.module import ProductClassifier

        info = checkpoint_info(self.checkpoint)
        model = ProductClassifier.from_checkpoint_dict(self.checkpoint, name=f"checkpoint {self.ckpt_path}")
        model.eval()
        features = cached_features(model.net, paths, cache_dir, info.image_size, info.decode) \
            if hasattr(model.net, "features") else None
        if features is not None:
            return [info.class_names[int(i)] for i in model.feature_probs(features)[2].argmax(1)]
        found = []
        for start in range(0, len(paths), batch_size):
            images = to_unit_float(torch.stack([load_image(p, info.image_size, decode=info.decode)
                                                for p in paths[start:start + batch_size]]))
            found += [info.class_names[int(i)] for i in model.view_probs(images)[2].argmax(1)]
        return found


def plan_extension(cfg: DictConfig) -> Extension | None:
    """``cfg.extend``'s checkpoint, checked against the folder and the model config, and
    ``cfg.data.classes`` set to its classes plus the folder's new ones; None without ``extend``."""
    from product_cnn.data.catalogue import PhotoCatalogue

    path = cfg.get("extend")
    if not path:
        return None
    if cfg.get("ckpt_path"):
        raise ProductCNNError("extend= and ckpt_path= exclude each other: ckpt_path resumes a run, extend "
                              "starts a new one from a checkpoint's network and classes")
    checkpoint = read_checkpoint(path)
    info = checkpoint_info(checkpoint)
    if str(cfg.model.get("arch")) != info.arch:
        raise ProductCNNError(f"extend={path} holds a {info.arch} network, model.arch="
                              f"{cfg.model.get('arch')}: give the preset it was trained with "
                              "(e.g. experiment=probe)")
    if cfg.data.get("image_size") != info.image_size:
        raise ProductCNNError(f"extend={path} takes {info.image_size} px images, data.image_size="
                              f"{cfg.data.get('image_size')}: give data.image_size={info.image_size}")
    folders = PhotoCatalogue(cfg.data.root).peek_class_names()
    lower = {name.lower(): name for name in info.class_names}
    for name in folders:
        if name not in info.class_names and name.lower() in lower:
            raise ProductCNNError(f"class folder {name}/ and the checkpoint's class {lower[name.lower()]} "
                                  f"differ only in case: rename the folder to {lower[name.lower()]} (or it "
                                  "would be a new class)")
    missing = [name for name in info.class_names if name not in folders]
    if missing:
        raise ProductCNNError(f"{cfg.data.root} has no folder for {', '.join(missing)}, class(es) of "
                              f"extend={path}: the extended model keeps every class, so it needs their "
                              "photos too")
    new = sorted(name for name in folders if name not in info.class_names)
    with open_dict(cfg):
        cfg.data.classes = [*info.class_names, *new]
    return Extension(str(path), list(info.class_names), new, checkpoint)
