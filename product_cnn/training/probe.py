"""A linear probe: the pretrained backbone frozen, its pooled features computed once per photo and
cached, then a linear head fitted in seconds (``experiment=probe``).

Features are cached on disk per network (architecture, the backbone's weights, input size) and per
photo (path, size, mtime), like the decoded-image cache: a second run, or the next fold of a
k-fold sweep, computes only what it has not seen. The head is scikit-learn's multinomial logistic
regression on standardised features; the standardisation is folded into the linear layer, so the
checkpoint is an ordinary one holding the whole network (backbone + head), which eval.py,
predict.py, serve.py, export.py, ensembles, k-fold CV and find_label_issues.py take unchanged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, open_dict
from torch import nn
from torch.utils.data import DataLoader

from product_cnn.confidence.card import ConfidenceCard
from product_cnn.confidence.neighbours import mix, neighbour_vote
from product_cnn.confidence.novelty import BANK_SIZE, bank_rows, feature_bank, similarity
from product_cnn.confidence.temperature import fit_temperature
from product_cnn.data.datamodule import ProductDataModule
from product_cnn.data.dataset import ImageListDataset
from product_cnn.data.feature_cache import FeatureCache
from product_cnn.data.images import to_unit_float
from product_cnn.errors import ProductCNNError
from product_cnn.models.photo_features import network_key
from product_cnn.training.calibrate import FALSE_UNKNOWN, MIN_HELDOUT, add_unknown, heldout_card, vote_share
from product_cnn.training.trainer import build_trainer

log = logging.getLogger(__name__)

Head = tuple[torch.Tensor, torch.Tensor]  # a linear layer's (weight, bias)


@torch.inference_mode()
def backbone_features(net: nn.Module, dataset: ImageListDataset, *, cache: FeatureCache, batch_size: int = 32,
                      num_workers: int = 0) -> torch.Tensor:
    """``(len(dataset), features)`` for the photos of ``dataset``: from ``cache`` where it has them,
    computed (eval mode, fp32, the images predict.py sees) and added to it where not."""
    keys = [cache.photo_key(path) for path, _ in dataset.samples]
    todo = [i for i, k in enumerate(keys) if k not in cache.entries]
    cache.hits, cache.misses = cache.hits + len(keys) - len(todo), cache.misses + len(todo)
    if todo:
        was_training = net.training
        net.eval()
        subset = torch.utils.data.Subset(dataset, todo)
        loader = DataLoader(subset, batch_size=batch_size, num_workers=num_workers)
        done = 0
        for batch in loader:
            images = to_unit_float(batch[0]).contiguous(memory_format=torch.channels_last)
            feats = net.features(images).float()
            for j, f in enumerate(feats):
                cache.entries[keys[todo[done + j]]] = f.clone()
            done += len(feats)
        net.train(was_training)
        cache.save()
    return torch.stack([cache.entries[k] for k in keys])


def fit_linear_head(features: torch.Tensor, labels: Sequence[int], num_classes: int, *, c: float = 1.0,
                    max_iter: int = 2000, seed: int = 0,
                    start: Head | None = None) -> Head:
    """(weight, bias) of a linear layer equal to a multinomial logistic regression fitted on the
    standardised ``features`` (scikit-learn), with the standardisation folded in. ``start``, a
    (weight, bias) of the same shape (a fit on more of the photos), is where the solver starts:
    the same optimum (the problem is convex) to the solver's tolerance, in fewer iterations."""
    from sklearn.linear_model import LogisticRegression

    x = features.double().numpy()
    y = np.asarray(labels)
    present = sorted(set(y.tolist()))
    if len(present) < 2:
        raise ProductCNNError("the probe needs training photos of at least two classes")
    mean, scale = x.mean(0), x.std(0)
    scale[scale < 1e-12] = 1.0
    model = LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
    if start is not None and len(present) == num_classes > 2:  # in the standardised space of these photos
        w0, b0 = start[0].double().numpy(), start[1].double().numpy()
        model.set_params(warm_start=True)
        model.coef_, model.intercept_ = w0 * scale, b0 + w0 @ mean
    model.fit((x - mean) / scale, y)
    coef = np.zeros((num_classes, x.shape[1]))
    intercept = np.full(num_classes, -1e4)  # a class with no training photo is never predicted
    rows, icpt = model.coef_, model.intercept_
    if len(present) == 2:  # scikit-learn's binary form: one row for the second class against the first
        rows, icpt = np.vstack([-rows[0] / 2, rows[0] / 2]), np.array([-icpt[0] / 2, icpt[0] / 2])
    coef[present], intercept[present] = rows, icpt
    weight = coef / scale
    bias = intercept - weight @ mean
    return torch.tensor(weight, dtype=torch.float32), torch.tensor(bias, dtype=torch.float32)


def cross_fit_card(features: torch.Tensor, labels: Sequence[int], num_classes: int, *, c: float,
                   max_iter: int, seed: int, folds: int = 5, confidence: Any = None,
                   paths: Sequence[str] | None = None,
                   start: Head | None = None) -> ConfidenceCard | None:
    """The probe's confidence card without a validation split: ``folds`` heads, each fitted on the
    other folds' training photos, predict the photos they did not see (the temperature, operating
    points and unknown threshold come from those predictions, with the vote of their nearest photos
    among the other folds mixed in at ``confidence.vote_share``); the bank holds every training
    photo (its label and path too). ``start``: the head fitted on all of them, where each fold's
    fit starts."""
    from sklearn.model_selection import StratifiedKFold

    confidence = dict(confidence or {})
    share = vote_share(confidence)
    y = np.asarray(labels)
    folds = min(folds, int(np.bincount(y).min()) if len(y) else 0)
    if folds < 2 or len(y) < MIN_HELDOUT:
        log.warning("Too few photos per class to cross-fit the probe's calibration: not calibrated")
        return None
    target = torch.as_tensor(y).long()
    logits = torch.zeros(len(y), num_classes)
    scores = torch.zeros(len(y))
    vote = torch.zeros(len(y), num_classes)
    for fit_idx, held_idx in StratifiedKFold(folds, shuffle=True, random_state=seed).split(y, y):
        weight, bias = fit_linear_head(features[fit_idx], y[fit_idx].tolist(), num_classes, c=c,
                                       max_iter=max_iter, seed=seed, start=start)
        logits[held_idx] = features[held_idx] @ weight.T + bias
        bank = feature_bank(features[fit_idx])
        scores[held_idx] = similarity(features[held_idx], bank)
        vote[held_idx] = neighbour_vote(features[held_idx], bank.float(), target[fit_idx], num_classes)
    temperature = fit_temperature(logits, target, then=(lambda p: mix(p, vote, share)) if share else None)
    source = f"training photos, cross-fitted ({folds} folds, {len(y)} photos)"
    card = heldout_card(temperature, source, logits, target, share=share, vote=vote)
    rows = bank_rows(len(y), int(confidence.get("bank_size", BANK_SIZE)))
    add_unknown(card, feature_bank(features[rows], len(rows)), scores,
                float(confidence.get("false_unknown", FALSE_UNKNOWN)))
    card.bank_labels = target[rows]
    card.bank_paths = None if paths is None else [str(paths[int(i)]) for i in rows]
    return card


def probe_features(net: nn.Module, dataset: ImageListDataset, datamodule: ProductDataModule,
                   image_size: Any) -> tuple[torch.Tensor, int, list[str]]:
    """(features of ``dataset``'s photos as ``net``'s head sees them, how many came from the
    cache, the cache files): several backbones are each cached on their own."""
    hp = datamodule.hparams
    parts, hits, paths = [], 0, []
    for member in getattr(net, "members", None) or [net]:
        cache = FeatureCache(datamodule.cache_dir, network_key(member, image_size, hp.decode))
        parts.append(backbone_features(member, dataset, cache=cache, batch_size=hp.batch_size,
                                       num_workers=hp.num_workers))
        hits, paths = hits + cache.hits, [*paths, str(cache.path)]
    return torch.cat(parts, dim=1), hits, paths


def fit_probe_head(options: Any, model: L.LightningModule, datamodule: ProductDataModule,
                   *, seed: int | None = 0, confidence: Any = None) -> None:
    """Set the network's head to a logistic regression fitted on the frozen backbone's cached
    features of the training photos: the probe itself, or the start of a fine-tune (LP-FT).
    The probe itself is also calibrated by cross-fitting (:func:`cross_fit_card`), unless
    ``confidence.fit`` is false."""
    net = model.net
    if not hasattr(net, "features"):
        raise ProductCNNError(f"probe=... needs a pretrained timm network (model=tf_efficientnet_lite0), "
                              f"not model.arch={model.hparams.arch}")
    if not (model.hparams.pretrained or model.hparams.weights_path):
        log.warning("The probe's backbone has random weights: model.pretrained=true gives ImageNet features")
    options = dict(options)
    start = time.perf_counter()
    train = datamodule.dataset("train")
    features, hits, paths = probe_features(net, train, datamodule, model.hparams.image_size)
    labels = [label for _, label in train.samples]
    weight, bias = fit_linear_head(features, labels, len(model.class_names), c=float(options.get("c", 1.0)),
                                   max_iter=int(options.get("max_iter", 2000)), seed=seed or 0)
    with torch.no_grad():
        net.head.weight.copy_(weight)
        net.head.bias.copy_(bias)
    model.confidence = None  # a fine-tune after the probe is calibrated on its own validation photos
    if not options.get("finetune") and (confidence or {}).get("fit", True):
        model.confidence = cross_fit_card(features, labels, len(model.class_names),
                                          c=float(options.get("c", 1.0)),
                                          max_iter=int(options.get("max_iter", 2000)), seed=seed or 0,
                                          folds=int(options.get("cross_fit_folds", 5)), confidence=confidence,
                                          paths=[path for path, _ in train.samples], start=(weight, bias))
        if model.confidence is not None:
            log.info("Calibration: %s", model.confidence.summary())
    log.info("Probe: features of %d training photos (%d of %d from the cache %s), linear head fitted in "
             "%.1f s", len(train), hits, len(train) * len(paths), ", ".join(paths),
             time.perf_counter() - start)


def save_probe(cfg: DictConfig, model: L.LightningModule, datamodule: ProductDataModule) -> dict[str, float]:
    """``experiment=probe``'s end: ``checkpoints/probe.ckpt`` (a complete Lightning checkpoint,
    written by a Trainer that runs no epoch) and the usual test report, from that checkpoint."""
    probe_cfg = cfg.copy()
    with open_dict(probe_cfg):
        probe_cfg.trainer.max_epochs = 0  # nothing to train: the fit sets up a checkpointable run
        if str(probe_cfg.trainer.get("precision", "auto")) == "auto":  # features and head are fp32:
            probe_cfg.trainer.precision = "32-true"  # so are its test and the precision it records
    trainer = build_trainer(probe_cfg, validate=False)
    trainer.fit(model, datamodule=datamodule, weights_only=True)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "probe.ckpt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(ckpt, weights_only=False)  # a complete checkpoint, as train.py writes
    metrics: dict[str, float] = {}
    if cfg.get("test", True):
        log.info("Testing the probe's checkpoint: %s", ckpt)
        model.tta = cfg.get("tta", "none")
        if model.tta == "none" and datamodule.split_samples.get("test"):  # cached too: the test runs the head
            model.test_features = probe_features(model.net, datamodule.dataset("test"), datamodule,
                                                 model.hparams.image_size)[0]
        try:
            results = trainer.test(model, datamodule=datamodule, ckpt_path=str(ckpt), weights_only=True)
        finally:
            model.test_features = None
        metrics.update(results[0] if results else {})
    return metrics
