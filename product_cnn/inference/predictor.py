"""Classify new photos with a trained checkpoint: ``Predictor.from_checkpoint(path).predict(images)``.

Images go through the checkpoint's own preprocessing (:func:`product_cnn.data.images.load_image`
at the image size it was trained with) and come back with the checkpoint's class names. A file
that cannot be read does not stop the others: its result carries the error instead.
Probabilities are temperature-scaled when the checkpoint is calibrated; with a gate
(:mod:`product_cnn.confidence.gate`) a photo under the confidence threshold is ``unsure`` and
one unlike every training photo ``unknown``, its top-k kept.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from product_cnn.confidence.card import ConfidenceCard
from product_cnn.confidence.gate import Gate, GateOptions
from product_cnn.confidence.novelty import similarity
from product_cnn.data.folder import expand_inputs  # noqa: F401  (predict's input list; here for callers)
from product_cnn.data.images import (
    ImageSize,
    check_decode,
    image_hw,
    load_image,
    pil_to_tensor,
    to_unit_float,
)
from product_cnn.errors import ImageLoadError, ProductCNNError
from product_cnn.inference.bn_fold import fold_batchnorm
from product_cnn.inference.calibrated import NeighbourMixed, TemperatureScaled
from product_cnn.inference.ensemble import ProbabilityAverage, check_members, expand_checkpoints
from product_cnn.inference.loading import load_network
from product_cnn.inference.results import Prediction, collect
from product_cnn.models.penultimate import Penultimate
from product_cnn.models.precision import resolve_precision
from product_cnn.models.tta import check_tta

log = logging.getLogger(__name__)

ImageInput = str | Path | Image.Image
PRECISIONS = ("auto", "32", "bf16")


def resolve_inference_precision(requested: str, device: str, flags: Iterable[str] | None = None,
                                trained: str = "32") -> tuple[str, str | None]:
    """(``"32"`` or ``"bf16"``, why) for ``precision=auto|32|bf16``; ``auto`` follows the
    checkpoint (``trained``: ``"32"`` or ``"bf16"``): bf16 only for a bf16-trained one on a device
    that computes it natively (``flags``: the CPU's, read from /proc/cpuinfo when None)."""
    requested = str(requested)
    if requested not in PRECISIONS:
        raise ProductCNNError(f"precision={requested!r} is not one of {', '.join(PRECISIONS)}")
    resolved, reason = resolve_precision(requested, device, flags, trained=trained)
    return ("bf16" if resolved.startswith("bf16") else "32"), reason


class _InputDataset(Dataset):
    """Decodes each input; an unreadable one yields a blank image and its error message."""

    def __init__(self, inputs: Sequence[ImageInput], image_size: ImageSize, decode: str) -> None:
        self.inputs = inputs
        self.image_size = image_size
        self.decode = decode
        self.blank = torch.zeros(3, *image_hw(image_size), dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        item = self.inputs[index]
        try:
            if isinstance(item, Image.Image):
                return pil_to_tensor(item, self.image_size), ""
            if hasattr(item, "load_array"):  # an input that decodes itself (a shard item)
                return torch.from_numpy(item.load_array(self.image_size, self.decode)), ""
            return load_image(item, self.image_size, decode=self.decode), ""
        except ImageLoadError as err:
            return self.blank, err.reason or str(err)
        except (OSError, ValueError) as err:  # a PIL image that fails to convert
            return self.blank, f"cannot convert image: {err}"


class Predictor:
    """A trained network plus its class names and preprocessing, ready to classify photos."""

    def __init__(self, net: nn.Module, class_names: Sequence[str], *, image_size: ImageSize = 256,
                 device: str = "auto", batch_size: int = 32, num_workers: int = 0, tta: str = "none",
                 cards: Sequence[ConfidenceCard | None] = (), gate: Gate | None = None,
                 decode: str = "reduced", precision: str = "32", trained: str = "32") -> None:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.decode = check_decode(decode)
        self.precision, reason = resolve_inference_precision(precision, self.device.type, trained=trained)
        if reason:
            log.info("Inference precision %s: %s", self.precision, reason)
        self.net = net.to(self.device).eval()
        self.class_names = list(class_names)
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.tta = tta
        self.cards = list(cards)  # one per member network, in order
        self.gate = gate or Gate()
        members = self.net.nets if isinstance(self.net, ProbabilityAverage) else [self.net]
        self._banks = []  # (hook on the member's classifier input, its bank on the device)
        if self.gate.unknown_threshold is not None:
            self._banks = [(Penultimate(m), c.bank.to(self.device)) for m, c in zip(members, self.cards,
                                                                                    strict=True)]
        first = self.cards[0] if self.cards else None  # the nearest training photos, as evidence
        self._evidence = (Penultimate(members[0]), first) if first and first.shows_photos else None

    @property
    def explain_net(self) -> nn.Module:
        """The network whose logits a heatmap explains: the (first) checkpoint's own, without the
        temperature and the nearest photos' vote (neither moves where it looked)."""
        net = self.net.nets[0] if isinstance(self.net, ProbabilityAverage) else self.net
        while isinstance(net, (NeighbourMixed, TemperatureScaled)):
            net = net.net
        return net

    @classmethod
    def from_checkpoint(cls, path: str | Path | Sequence[str | Path], *, device: str = "auto",
                        batch_size: int = 32, num_workers: int = 0, tta: str = "none",
                        gate: GateOptions | None = None, precision: str = "auto") -> Predictor:
        """Load a training checkpoint safely (no pickled code runs).

        Several paths (or a glob pattern) make an ensemble: the mean of their probabilities
        (same classes and image size required; see :mod:`product_cnn.inference.ensemble`).
        ``gate`` says what the gate holds back (:class:`~product_cnn.confidence.gate.GateOptions`);
        ``precision="auto"`` follows the checkpoints (bf16 only when every one was trained in it).
        """
        check_tta(tta)
        paths = expand_checkpoints(path)
        models = [load_network(p) for p in paths]
        infos = [m.info for m in models]
        check_members([f"checkpoint {p}" for p in paths], [i.class_names for i in infos],
                      [i.image_size for i in infos], [i.decode for i in infos])
        cards = [i.card for i in infos]
        built = (gate or GateOptions()).build(cards)
        nets = [TemperatureScaled(fold_batchnorm(m.net), m.info.temperature) for m in models]
        nets = [NeighbourMixed(n, c) if c is not None and c.votes else n
                for n, c in zip(nets, cards, strict=True)]
        net = nets[0] if len(nets) == 1 else ProbabilityAverage(nets)
        first = infos[0]
        return cls(net, first.class_names, image_size=first.image_size, device=device, batch_size=batch_size,
                   num_workers=num_workers, tta=tta, cards=cards, gate=built, decode=first.decode,
                   precision=precision, trained="bf16" if all(i.precision == "bf16" for i in infos) else "32")

    @torch.no_grad()
    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (temperature-scaled when calibrated) for a uint8 or [0, 1] float
        batch ``(N, 3, H, W)``. With ``tta="flip"``: the mean over each image and its mirror image."""
        return self.scores(batch)[0]

    @torch.no_grad()
    def scores(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(probabilities, "none of these" similarity or None): one pass gives both (the
        similarity is the members' mean, from the unflipped view)."""
        probs, sims, _ = self.evidence(batch)
        return probs, sims

    @torch.no_grad()
    def evidence(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, list[list] | None]:
        """:meth:`scores` and, when the checkpoint keeps its training photos' paths, each photo's
        nearest ones (the first member's bank) from the same pass: (bank row, category, photo,
        similarity) tuples."""
        images = to_unit_float(batch.to(self.device))
        hooks = [hook for hook, _ in self._banks] + ([self._evidence[0]] if self._evidence else [])
        for hook in hooks:
            hook.__enter__()
        try:
            with torch.autocast(self.device.type, torch.bfloat16, enabled=self.precision == "bf16"):
                probs = torch.softmax(self.net(images).float(), dim=1)
                if self.tta == "flip":
                    probs = (probs + torch.softmax(self.net(images.flip(-1)).float(), dim=1)) / 2
            sims = [similarity(hook.take().float(), bank) for hook, bank in self._banks]
            found = None
            if self._evidence:
                hook, card = self._evidence
                found = card.nearest_photos(hook.take().cpu()).rows(self.class_names)
        finally:
            for hook in hooks:
                hook.__exit__()
        return probs.cpu(), (torch.stack(sims).mean(0).cpu() if sims else None), found

    def iter_predict(self, images: Sequence[ImageInput], topk: int = 3) -> Iterator[Prediction]:
        """Yield one :class:`Prediction` per input, in order, batch by batch."""
        topk = max(1, min(topk, len(self.class_names)))
        loader = DataLoader(_InputDataset(images, self.image_size, self.decode), batch_size=self.batch_size,
                            num_workers=self.num_workers, pin_memory=self.device.type == "cuda")
        index = 0
        for batch, errors in loader:
            probs, sims, found = self.evidence(batch)
            top_p, top_i = probs.topk(topk, dim=1)
            for row in range(len(errors)):
                item = images[index]
                source = str(item) if not isinstance(item, Image.Image) else f"<image {index}>"
                index += 1
                if errors[row]:
                    yield Prediction(source, error=errors[row])
                    continue
                ranked = [(self.class_names[int(i)], float(p)) for p, i in zip(top_p[row], top_i[row],
                                                                               strict=True)]
                sim = float(sims[row]) if sims is not None else None
                verdict = self.gate.verdict(ranked[0][1], sim)
                yield Prediction(source, verdict or ranked[0][0], ranked[0][1], ranked, verdict=verdict,
                                 similarity=sim, nearest=[n[1:] for n in found[row]] if found else [])

    def describe(self, ckpt_path: str) -> str:
        """What classifies: ``ckpt_path``, or "an ensemble of N checkpoints"."""
        if isinstance(self.net, ProbabilityAverage):
            return f"an ensemble of {len(self.net.nets)} checkpoints"
        return str(ckpt_path)

    def predict(self, images: ImageInput | Sequence[ImageInput], topk: int = 3,
                progress: bool = False, explain: str | Path | None = None) -> list[Prediction]:
        """Classify paths and/or PIL images; ``progress`` shows a bar for long lists; ``explain``: a
        folder for each photo's heatmap (:mod:`product_cnn.inference.explain`), linked from its result."""
        if isinstance(images, (str, Path, Image.Image)):
            images = [images]
        images = list(images)
        predictions = collect(self.iter_predict(images, topk), len(images), progress)
        if explain is not None:
            from product_cnn.inference.explain import write_heatmaps

            written = write_heatmaps(self, predictions, images, explain)
            log.info("Heatmaps (where the network looked, Grad-CAM): %d in %s", written, explain)
        return predictions
