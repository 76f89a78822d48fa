"""The LightningModule: a network (the Keras mirror by default) with its loss, optimiser, test-time
views and test outputs; the metrics per stage live in :mod:`product_cnn.training.stage_metrics`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from product_cnn.confidence.card import ConfidenceCard
from product_cnn.confidence.temperature import calibrated_probs
from product_cnn.data.images import ImageSize, image_hw
from product_cnn.errors import CheckpointError, ProductCNNError
from product_cnn.models.checkpoint import checkpoint_info
from product_cnn.models.networks import MIRROR, build_network
from product_cnn.models.penultimate import Penultimate
from product_cnn.models.tta import TTA, check_tta  # noqa: F401  (TTA: part of this module's interface)
from product_cnn.training.run_record import RunRecord
from product_cnn.training.schedules import SCHEDULES, build_schedule
from product_cnn.training.stage_metrics import StageMetrics

KERAS_ADAM = {"_target_": "torch.optim.Adam", "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-7}


class ProductClassifier(L.LightningModule):
    """Trains a network (:mod:`product_cnn.models.networks`: the Keras mirror by default) with
    cross-entropy on logits; inference returns softmax.

    ``arch`` names the network; ``pretrained``/``weights_path`` load a torchvision or timm backbone.
    ``optimizer`` and ``scheduler`` are Hydra-style dicts (``_target_`` plus arguments),
    instantiated in :meth:`configure_optimizers`; ``schedule`` (cosine, onecycle) with
    ``warmup_epochs`` is the per-batch alternative to ``scheduler``; ``backbone_lr_ratio`` scales
    the learning rate of a pretrained backbone against the head's (discriminative rates), and
    ``freeze_bn`` keeps the backbone's BatchNorm statistics as loaded; ``arch="a+b"`` puts timm
    backbones side by side (``flip_features``: each one's features averaged with the mirror
    image's). ``label_smoothing`` and
    ``class_weights`` (one per class) shape the training loss. Class names are saved with the
    checkpoint. ``channels_last`` stores weights and activations NHWC (faster convolutions on
    CPU and GPU); ``compile`` runs the network through ``torch.compile``. Neither changes the
    checkpoint. ``tta`` (not saved: an inference setting) averages the probabilities of each
    image and its mirror image when testing and predicting.
    """

    METRIC_FLUSH_STEPS = 50  # steps between metric updates (each one GPU sync)

    def __init__(
        self,
        *, num_classes: int = 5,
        class_names: Sequence[str] | None = None,
        image_size: ImageSize = 256,
        dropout: float = 0.1,
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        channels_last: bool = False,
        compile: bool = False,
        class_weights: Sequence[float] | None = None,
        arch: str = MIRROR,
        pretrained: bool = False,
        weights_path: str | None = None,
        label_smoothing: float = 0.0,
        schedule: str = "none",
        warmup_epochs: float = 0.0,
        backbone_lr_ratio: float = 1.0,
        freeze_bn: bool = False,
        flip_features: bool = False,
    ) -> None:
        super().__init__()
        # plain types only (Hydra instantiates with _convert_="all"): checkpoints load weights_only
        class_names = list(class_names) if class_names is not None else None
        if class_names is not None:
            num_classes = len(class_names)
        optimizer = dict(optimizer) if optimizer is not None else dict(KERAS_ADAM)
        scheduler = dict(scheduler) if scheduler else None
        class_weights = [float(w) for w in class_weights] if class_weights is not None else None
        if class_weights is not None and len(class_weights) != num_classes:
            raise ValueError(f"{len(class_weights)} class weights for {num_classes} classes")
        if schedule not in SCHEDULES:
            raise ProductCNNError(f"model.schedule={schedule!r} is not one of {', '.join(SCHEDULES)}")
        if schedule != "none" and scheduler:
            raise ProductCNNError("model.schedule and model.scheduler exclude each other: "
                                  "set one of them to none/null")
        if backbone_lr_ratio <= 0:
            raise ProductCNNError(f"model.backbone_lr_ratio={backbone_lr_ratio} must be > 0")
        self.save_hyperparameters()
        self.net = build_network(arch, num_classes, image_size, dropout=dropout, pretrained=pretrained,
                                 weights_path=weights_path, flip=flip_features)
        self.tta = "none"
        self.test_features: torch.Tensor | None = None  # the head's inputs, by test index (the probe's)
        self.example_input_array = torch.zeros(1, 3, *image_hw(image_size))  # FLOPs per image in the summary
        # class-weighted training loss (data.balance=weighted_loss); val/test losses stay plain
        self.register_buffer("class_weights", torch.tensor(class_weights) if class_weights else None,
                             persistent=False)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        if compile:
            self.net.compile()  # in place: parameter names (and checkpoints) stay the same
        self.stage_metrics = StageMetrics(num_classes)
        self.record = RunRecord(self.class_names)  # filled as training and testing go; read by callbacks
        self._last_val: dict[str, float] = {}
        # (indices, probabilities before and after temperature scaling, side by side)
        self._test_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.confidence: ConfidenceCard | None = None  # fitted on held-out photos after training

    @classmethod
    def from_checkpoint_dict(cls, checkpoint: Mapping[str, Any], load_weights: bool = True,
                             name: str = "the checkpoint", **overrides: Any) -> ProductClassifier:
        """Rebuild the module from a checkpoint read by :func:`read_checkpoint`.

        Inference does not compile by default (``compile=False``), whatever training used.
        Raises :class:`CheckpointError` (naming ``name``) when the hyper-parameters or weights
        do not make this model.
        """
        # weights come from the checkpoint: nothing to download or read for the backbone
        hparams = {**checkpoint["hyper_parameters"], "compile": False, "pretrained": False,
                   "weights_path": None, **overrides}
        try:
            model = cls(**hparams)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{name} does not describe this model: {err}") from None
        model.check_weights_fit(checkpoint["state_dict"], name)
        if load_weights:
            model.load_state_dict(checkpoint["state_dict"])
        model.confidence = checkpoint_info(checkpoint).card
        return model

    def check_weights_fit(self, state: Mapping[str, torch.Tensor], name: str = "the checkpoint") -> None:
        """Raise :class:`CheckpointError` in one line when ``state`` does not fit this model."""
        expected = self.state_dict()  # (load_state_dict's own message is many lines long)
        wrong = [k for k in expected if k not in state or tuple(state[k].shape) != tuple(expected[k].shape)]
        if wrong:
            shapes = ", ".join(f"{k} {tuple(state[k].shape) if k in state else 'missing'} "
                               f"(expected {tuple(expected[k].shape)})" for k in wrong[:3])
            raise CheckpointError(f"{name} holds weights of another model: {shapes}")

    @property
    def class_names(self) -> list[str]:
        names = self.hparams.class_names
        return list(names) if names else [str(i) for i in range(self.hparams.num_classes)]

    @property
    def backbone(self) -> torch.nn.Module:
        """The pretrained part of the network (for Lightning's ``BackboneFinetuning``)."""
        if not hasattr(self.net, "backbone"):
            raise ProductCNNError(f"model {self.hparams.arch} has no pretrained backbone to fine-tune: "
                                  "callbacks=finetune needs a timm or torchvision model, e.g. model=resnet18")
        return self.net.backbone

    def train(self, mode: bool = True) -> ProductClassifier:
        """The train/eval switch; with ``freeze_bn`` the backbone's BatchNorm stays in eval mode."""
        super().train(mode)
        if mode and self.hparams.get("freeze_bn") and hasattr(self.net, "backbone"):
            for module in self.net.backbone.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def on_fit_start(self) -> None:
        # Lightning keeps each submodule's mode as it finds it (and restores it after validation)
        # instead of calling train(): freeze the BatchNorm statistics here, before any epoch
        if self.training:
            self.train()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a float batch in [0, 1]."""
        return self.net(x.contiguous(memory_format=self.memory_format))

    def views(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The logits of each view ``tta`` asks for: the images, and with ``flip`` their mirrors."""
        return [self(images)] if self.tta == "none" else [self(images), self(images.flip(-1))]

    @staticmethod
    def _merge(views: list[torch.Tensor]) -> torch.Tensor:
        """One view's logits, or the log of the views' mean probabilities."""
        return views[0] if len(views) == 1 else calibrated_probs(views, 1.0).log()

    def view_probs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits for the metrics, probabilities before and after temperature scaling) of the
        ``tta`` views, averaged; with the card's nearest-photo vote mixed into each view as the
        Predictor mixes it."""
        card = self.confidence
        if card is None or not card.votes:
            views = self.views(images)
            return self._merge(views), calibrated_probs(views, 1.0), calibrated_probs(views, self.temperature)
        raws, probs = [], []
        with Penultimate(self.net) as grab:
            for view in [images] if self.tta == "none" else [images, images.flip(-1)]:
                logits = self(view)
                features = grab.take()
                raws.append(card.mixed(calibrated_probs(logits, 1.0), features))
                probs.append(card.mixed(calibrated_probs(logits, self.temperature), features))
        raw = torch.stack(raws).mean(0)
        return raw.clamp_min(1e-12).log(), raw, torch.stack(probs).mean(0)

    def feature_probs(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`view_probs` of photos whose features (the head's input) are known, one view each:
        the head and the card's vote, no backbone."""
        features = features.to(self.device)
        logits = self.net.head(features)
        raw, probs = calibrated_probs(logits, 1.0), calibrated_probs(logits, self.temperature)
        card = self.confidence
        if card is None or not card.votes:
            return logits, raw, probs
        raw = card.mixed(raw, features)
        return raw.clamp_min(1e-12).log(), raw, card.mixed(probs, features)

    def _evaluate(self, images: torch.Tensor) -> torch.Tensor:
        """Logits, or with ``tta="flip"`` the log of the mean probabilities of images and mirrors."""
        return self._merge(self.views(images))

    @property
    def temperature(self) -> float:
        """The fitted temperature (1 until calibrated): predictions divide their logits by it."""
        return self.confidence.temperature if self.confidence is not None else 1.0

    def _step(self, batch: Any, stage: str, logits: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = batch[0], batch[1]
        if logits is None:
            logits = self(images) if stage == "train" else self._evaluate(images)
        if stage == "train":
            loss = F.cross_entropy(logits, labels, weight=self.class_weights,
                                   label_smoothing=self.hparams.label_smoothing)
            if labels.ndim == 2:  # soft labels from MixUp/CutMix: metrics count the larger share
                labels = labels.argmax(1)
        else:
            loss = F.cross_entropy(logits, labels)
        self.stage_metrics.add(stage, loss.detach(), logits.detach(), labels,
                               flush_every=self.METRIC_FLUSH_STEPS)
        return loss, logits.detach()

    def _log_epoch(self, stage: str) -> dict[str, float]:
        """Compute (synced across processes by torchmetrics), log and reset a stage's metrics."""
        values = self.stage_metrics.epoch(stage)
        self.log_dict(values, sync_dist=False, prog_bar=stage != "test")
        return {k: float(v) for k, v in values.items()}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")[0]

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        if self.test_features is not None and self.tta == "none" and len(batch) > 2:
            logits, raw, probs = self.feature_probs(self.test_features[batch[2].cpu()])
        else:
            logits, raw, probs = self.view_probs(batch[0])
        self._step(batch, "test", logits)
        if len(batch) > 2:  # (images, labels, indices): keep each photo's probabilities
            self._test_outputs.append((batch[2], torch.cat([raw, probs], 1)))
        return {"probs": probs}

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        """Class probabilities (softmax, temperature-scaled when calibrated) for a batch."""
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.view_probs(images)[2]

    def on_train_epoch_end(self) -> None:
        train = self._log_epoch("train")
        self.record.history.append({"epoch": self.current_epoch, **train, **self._last_val})
        self._last_val = {}

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # the sanity check must not leak into val metrics
            self.stage_metrics.discard_val()
            return
        self._last_val = self._log_epoch("val")
        self.record.val_confusion = self.stage_metrics.val_confusion()

    def on_test_epoch_start(self) -> None:
        self._test_outputs = []

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")  # flushes the pending test steps into the report metrics too
        self.record.test_report = self.stage_metrics.test_counts()
        gathered = self._gather_test_outputs()
        self.record.test_predictions = self.record.test_raw_probs = None
        if gathered is not None:
            indices, both = gathered
            raw, probs = both.chunk(2, dim=1)
            self.record.test_predictions, self.record.test_raw_probs = (indices, probs), raw
        self.record.temperature = self.temperature
        self.record.confidence = self.confidence
        self._test_outputs = []

    def _gather_test_outputs(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(indices, probabilities) of every test photo, from every process, sorted by index."""
        if not self._test_outputs:
            return None
        indices = torch.cat([i for i, _ in self._test_outputs]).long()
        probs = torch.cat([p for _, p in self._test_outputs])
        if self.trainer.world_size > 1:  # processes hold different counts: pad, gather, drop padding
            size = torch.tensor([len(indices)], device=indices.device)
            longest = int(self.all_gather(size).max())
            pad = longest - len(indices)
            indices = torch.cat([indices, indices.new_full((pad,), -1)])
            probs = torch.cat([probs, probs.new_zeros((pad, probs.shape[1]))])
            indices, probs = self.all_gather(indices).flatten(), self.all_gather(probs).flatten(0, 1)
            keep = indices >= 0
            indices, probs = indices[keep], probs[keep]
        order = indices.argsort()
        return indices[order].cpu(), probs[order].cpu()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["metric_history"] = [dict(h) for h in self.record.history]
        if self._trainer is not None:  # what inference runs it in by default (models/checkpoint.py)
            checkpoint["precision"] = str(self.trainer.precision)
        if self.confidence is not None:
            checkpoint["confidence"] = self.confidence.to_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Resuming or evaluating a checkpoint: take its history. Testing the best checkpoint
        # right after training: keep the longer history of the whole run.
        saved = [dict(h) for h in checkpoint.get("metric_history", [])]
        if len(saved) >= len(self.record.history):
            self.record.history = saved
        if "confidence" in checkpoint:
            self.confidence = ConfidenceCard.from_dict(checkpoint["confidence"])

    def _param_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters only (a frozen backbone joins later: BackboneFinetuning); with
        ``backbone_lr_ratio`` != 1 the backbone is a group of its own at that share of the lr."""
        ratio = float(self.hparams.get("backbone_lr_ratio", 1.0))
        if ratio == 1.0 or not hasattr(self.net, "backbone"):
            return [{"params": [p for p in self.parameters() if p.requires_grad]}]
        in_backbone = {id(p) for p in self.net.backbone.parameters()}
        backbone = [p for p in self.net.backbone.parameters() if p.requires_grad]
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in in_backbone]
        lr = float(self.hparams.optimizer.get("lr", 1e-3))
        return [g for g in ({"params": rest}, {"params": backbone, "lr": lr * ratio}) if g["params"]]

    def configure_optimizers(self) -> Any:
        optimizer = instantiate(self.hparams.optimizer, _partial_=True)(self._param_groups())
        if self.hparams.schedule != "none":
            total = self.trainer.estimated_stepping_batches
            per_epoch = total / max(1, self.trainer.max_epochs or 1)
            schedule = build_schedule(self.hparams.schedule, optimizer, total,
                                      round(self.hparams.warmup_epochs * per_epoch))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
        if not self.hparams.scheduler:
            return optimizer
        scheduler_cfg = dict(self.hparams.scheduler)
        monitor = scheduler_cfg.pop("monitor", "val/loss")
        interval = scheduler_cfg.pop("interval", "epoch")
        scheduler = instantiate(scheduler_cfg, optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": monitor, "interval": interval},
        }
