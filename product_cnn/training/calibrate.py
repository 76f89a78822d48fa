"""After fitting: the checkpoint's confidence card from its validation photos (the temperature,
the held-out confidences that set operating points, the feature bank and unknown threshold),
written into the saved checkpoints so that predict.py and serve.py find it there."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from product_cnn.atomic import atomic_path
from product_cnn.confidence.card import ConfidenceCard, card_from_heldout
from product_cnn.confidence.neighbours import mix, neighbour_vote
from product_cnn.confidence.novelty import BANK_SIZE, bank_rows, feature_bank, similarity, unknown_threshold
from product_cnn.confidence.temperature import calibrated_probs, fit_temperature
from product_cnn.data.datamodule import ProductDataModule
from product_cnn.data.dataset import ImageListDataset
from product_cnn.data.images import to_unit_float
from product_cnn.errors import ProductCNNError
from product_cnn.models.checkpoint import read_checkpoint
from product_cnn.models.penultimate import Penultimate

log = logging.getLogger(__name__)
FALSE_UNKNOWN = 0.02  # the share of held-out product photos the unknown threshold rejects
MIN_HELDOUT = 10  # fewer held-out photos than this: no calibration (a temperature from 3 photos is noise)


@torch.inference_mode()
def network_outputs(model: L.LightningModule, dataset: ImageListDataset, batch_size: int = 32,
                    num_workers: int = 0) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """(logits of each test-time view, pooled features, labels) of ``dataset``, in eval mode, fp32."""
    was_training = model.training
    model.eval()
    views: list[list[torch.Tensor]] = []
    features, labels = [], []
    with Penultimate(model.net) as grab:
        for batch in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers):
            images = to_unit_float(batch[0].to(model.device))
            logits = model.views(images)
            features.append(grab.take().cpu())
            views.append([v.float().cpu() for v in logits])
            labels.append(torch.as_tensor(batch[1]))
    model.train(was_training)
    if not views:
        return [], torch.empty(0), torch.empty(0, dtype=torch.long)
    per_view = [torch.cat([v[i] for v in views]) for i in range(len(views[0]))]
    return per_view, torch.cat(features), torch.cat(labels).long()


def add_unknown(card: ConfidenceCard, bank: torch.Tensor, heldout_scores: torch.Tensor,
                false_unknown: float = FALSE_UNKNOWN) -> None:
    """Give ``card`` its feature bank and the threshold rejecting ``false_unknown`` of the held-out photos."""
    card.bank = bank
    card.unknown_threshold = unknown_threshold(heldout_scores, false_unknown)
    card.false_unknown = false_unknown


def vote_share(options: Any) -> float:
    """``confidence.vote_share``: the nearest training photos' weight in the probabilities, in [0, 1)."""
    share = float((options or {}).get("vote_share") or 0.0)
    if not 0 <= share < 1:
        raise ProductCNNError(f"confidence.vote_share={share:g} must be in [0, 1) "
                              "(the head's weight is 1 minus it)")
    return share


def heldout_card(temperature: float, source: str, logits: Any, labels: torch.Tensor, *, share: float,
                 vote: torch.Tensor | None) -> ConfidenceCard:
    """The card from held-out logits (one tensor or a list of views) and, with ``share`` > 0, the
    vote of each held-out photo's nearest training photos mixed in, as predictions will mix it."""
    raw, probs = calibrated_probs(logits, 1.0), calibrated_probs(logits, temperature)
    if share and vote is not None:
        raw, probs = mix(raw, vote, share), mix(probs, vote, share)
    card = card_from_heldout(temperature, source, raw_probs=raw, probs=probs, labels=labels)
    card.vote_share = share if vote is not None else 0.0
    return card


def fit_confidence(model: L.LightningModule, datamodule: ProductDataModule, options: Any = None
                   ) -> ConfidenceCard:
    """The card of ``model`` (its weights as they are) from the validation split; the bank holds
    the training photos' features, labels and paths."""
    options = dict(options or {})
    share = vote_share(options)
    hp = datamodule.hparams
    val = datamodule.dataset("val")
    views, val_features, labels = network_outputs(model, val, hp.batch_size, hp.num_workers)
    train = datamodule.dataset("train")
    _, train_features, train_labels = network_outputs(model, train, hp.batch_size, hp.num_workers)
    rows = bank_rows(len(train_features), int(options.get("bank_size", BANK_SIZE)))
    bank = feature_bank(train_features[rows], len(rows))
    vote = neighbour_vote(val_features, bank.float(), train_labels[rows], len(model.class_names)) \
        if share else None
    temperature = fit_temperature(views, labels, then=None if vote is None else lambda p: mix(p, vote, share))
    card = heldout_card(temperature, f"validation split ({len(labels)} photos)", views, labels,
                        share=share, vote=vote)
    false_unknown = float(options.get("false_unknown", FALSE_UNKNOWN))
    add_unknown(card, bank, similarity(val_features, bank), false_unknown)
    card.bank_labels = train_labels[rows]
    samples = getattr(train, "samples", None)  # shards stream their photos: no paths to show
    card.bank_paths = [str(samples[int(i)][0]) for i in rows] if samples is not None else None
    return card


def calibrate_after_fit(trainer: L.Trainer, model: L.LightningModule, datamodule: ProductDataModule,
                        *, tta: str, options: Any = None) -> ConfidenceCard | None:
    """Fit the card of the checkpoint the run chose (with the final test's ``tta``) and store it in
    that checkpoint (not in ``last.ckpt``: that one is for resuming, and a resumed run fits its own);
    the test after fit then reports with it. None (a note in the log) with too few validation photos."""
    held_out = len(datamodule.split_samples.get("val", []))
    if held_out < MIN_HELDOUT:
        log.warning("Not calibrated: %d validation photo(s), at least %d needed (data.val_fraction)",
                    held_out, MIN_HELDOUT)
        return None
    callback = trainer.checkpoint_callback
    chosen = callback.best_model_path if callback is not None else ""
    if chosen:  # the weights the test will load (the best epoch, or the last one)
        model.load_state_dict(read_checkpoint(chosen)["state_dict"])
    model.tta = tta
    card = fit_confidence(model, datamodule, options)
    model.confidence = card
    log.info("Calibration: %s", card.summary())
    if trainer.is_global_zero and chosen:
        store_card(chosen, card)
    trainer.strategy.barrier()
    return card


def store_card(path: str | Path, card: ConfidenceCard) -> None:
    """Add ``card`` to the checkpoint at ``path``, atomically (the old file stays until the new is whole)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    checkpoint["confidence"] = card.to_dict()
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
