"""Classify new photos with a trained checkpoint: ``Predictor.from_checkpoint(path).predict(images)``.

Images go through the checkpoint's own preprocessing (:func:`product_cnn.data.images.load_image`
at the image size it was trained with) and come back with the checkpoint's class names. A file
that cannot be read does not stop the others: its result carries the error instead.
Probabilities are temperature-scaled when the checkpoint is calibrated; with a gate
(:mod:`product_cnn.confidence.gate`) a photo under the confidence threshold is ``unsure`` and
one unlike every training photo ``unknown``, its top-k kept.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image
from rich.progress import Progress
from torch import nn
from torch.utils.data import DataLoader, Dataset

from product_cnn.atomic import write_text
from product_cnn.confidence.card import ConfidenceCard
from product_cnn.confidence.gate import Gate, build_gate
from product_cnn.confidence.novelty import similarity
from product_cnn.data.folder import find_images
from product_cnn.data.images import (
    IMG_EXTENSIONS,
    ImageSize,
    check_decode,
    image_hw,
    is_image_file,
    load_image,
    pil_to_tensor,
    to_unit_float,
)
from product_cnn.errors import DataError, ImageLoadError, ProductCNNError
from product_cnn.inference.bn_fold import fold_batchnorm
from product_cnn.inference.calibrated import TemperatureScaled
from product_cnn.inference.ensemble import ProbabilityAverage, check_members, expand_checkpoints
from product_cnn.inference.loading import load_network
from product_cnn.models.penultimate import Penultimate
from product_cnn.models.tta import check_tta
from product_cnn.training.precision import resolve_precision

log = logging.getLogger(__name__)

ImageInput = str | Path | Image.Image
PRECISIONS = ("auto", "32", "bf16")


def resolve_inference_precision(requested: str, device: str) -> tuple[str, str | None]:
    """(``"32"`` or ``"bf16"``, why) for ``precision=auto|32|bf16``; ``auto`` is bf16 where the
    device computes it natively, as training's ``trainer.precision=auto`` decides."""
    requested = str(requested)
    if requested not in PRECISIONS:
        raise ProductCNNError(f"precision={requested!r} is not one of {', '.join(PRECISIONS)}")
    resolved, reason = resolve_precision(requested, device)
    return ("bf16" if resolved.startswith("bf16") else "32"), reason


@dataclass
class Prediction:
    """One input's result: the top category and its probability, the top-k, or an error.

    ``category`` is ``unsure`` or ``unknown`` when the gate held the photo back (``verdict``);
    ``similarity`` is its "none of these" score when the checkpoint carries one.
    """

    source: str
    category: str | None = None
    confidence: float | None = None
    topk: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None
    verdict: str | None = None  # unsure | unknown | None (filed)
    similarity: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


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
            return load_image(item, self.image_size, decode=self.decode), ""
        except ImageLoadError as err:
            return self.blank, err.reason or str(err)
        except (OSError, ValueError) as err:  # a PIL image that fails to convert
            return self.blank, f"cannot convert image: {err}"


def expand_inputs(inputs: str | Path | Iterable[str | Path]) -> list[str]:
    """Files, folders and glob patterns -> the list of files to classify, in order.

    Folders (searched recursively) and patterns give their image files, as the training scan
    finds them; other files there are skipped with a note in the log. A file named explicitly
    is always kept: one that is not an image gets its error in the results. Raises
    :class:`DataError` for a path or pattern that matches nothing.
    """
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    files: list[str] = []
    skipped: list[str] = []
    for item in items:
        text = os.path.expanduser(str(item))
        if os.path.isdir(text):
            images, other = find_images(text)
            files += images
            skipped += other
        elif os.path.isfile(text):
            files.append(text)
        elif glob.has_magic(text):
            matches = sorted(p for p in glob.glob(text, recursive=True) if os.path.isfile(p))
            if not matches:
                raise DataError(f"no files match {text}")
            files += [p for p in matches if is_image_file(p)]
            skipped += [p for p in matches if not is_image_file(p)]
        else:
            raise DataError(f"input {text} does not exist")
    if skipped:
        log.info("Skipped %d file(s) that are not images (by their extension), e.g. %s",
                 len(skipped), skipped[0])
    if not files:
        raise DataError(f"no image files in {', '.join(map(str, items))} "
                        f"(looked for {', '.join(IMG_EXTENSIONS)})")
    return list(dict.fromkeys(files))  # keep order, drop repeats


class Predictor:
    """A trained network plus its class names and preprocessing, ready to classify photos."""

    def __init__(self, net: nn.Module, class_names: Sequence[str], image_size: ImageSize = 256,
                 device: str = "auto", batch_size: int = 32, num_workers: int = 0, tta: str = "none",
                 cards: Sequence[ConfidenceCard | None] = (), gate: Gate | None = None,
                 decode: str = "reduced", precision: str = "32") -> None:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.decode = check_decode(decode)
        self.precision, reason = resolve_inference_precision(precision, self.device.type)
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

    @classmethod
    def from_checkpoint(cls, path: str | Path | Sequence[str | Path], device: str = "auto",
                        batch_size: int = 32, num_workers: int = 0, tta: str = "none",
                        min_confidence: float | None = None, target_accuracy: float | None = None,
                        unknown: bool = True, precision: str = "32") -> Predictor:
        """Load a training checkpoint safely (no pickled code runs).

        Several paths (or a glob pattern) make an ensemble: the mean of their probabilities
        (same classes and image size required; see :mod:`product_cnn.inference.ensemble`).
        ``min_confidence`` / ``target_accuracy`` / ``unknown`` set the gate
        (:func:`product_cnn.confidence.gate.build_gate`).
        """
        check_tta(tta)
        paths = expand_checkpoints(path)
        models = [load_network(p) for p in paths]
        check_members([f"checkpoint {p}" for p in paths], [m.class_names for m in models],
                      [m.image_size for m in models], [m.decode for m in models])
        cards = [m.card for m in models]
        gate = build_gate(cards, min_confidence, target_accuracy, unknown)
        nets = [TemperatureScaled(fold_batchnorm(m.net), m.temperature) for m in models]
        net = nets[0] if len(nets) == 1 else ProbabilityAverage(nets)
        return cls(net, models[0].class_names, models[0].image_size, device, batch_size,
                   num_workers, tta, cards, gate, models[0].decode, precision)

    @torch.no_grad()
    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (temperature-scaled when calibrated) for a uint8 or [0, 1] float
        batch ``(N, 3, H, W)``. With ``tta="flip"``: the mean over each image and its mirror image."""
        return self.scores(batch)[0]

    @torch.no_grad()
    def scores(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(probabilities, "none of these" similarity or None): one pass gives both (the
        similarity is the members' mean, from the unflipped view)."""
        images = to_unit_float(batch.to(self.device))
        for hook, _ in self._banks:
            hook.__enter__()
        try:
            with torch.autocast(self.device.type, torch.bfloat16, enabled=self.precision == "bf16"):
                probs = torch.softmax(self.net(images).float(), dim=1)
                if self.tta == "flip":
                    probs = (probs + torch.softmax(self.net(images.flip(-1)).float(), dim=1)) / 2
            sims = [similarity(hook.take().float(), bank) for hook, bank in self._banks]
        finally:
            for hook, _ in self._banks:
                hook.__exit__()
        return probs.cpu(), (torch.stack(sims).mean(0).cpu() if sims else None)

    def iter_predict(self, images: Sequence[ImageInput], topk: int = 3) -> Iterator[Prediction]:
        """Yield one :class:`Prediction` per input, in order, batch by batch."""
        topk = max(1, min(topk, len(self.class_names)))
        loader = DataLoader(_InputDataset(images, self.image_size, self.decode), batch_size=self.batch_size,
                            num_workers=self.num_workers, pin_memory=self.device.type == "cuda")
        index = 0
        for batch, errors in loader:
            probs, sims = self.scores(batch)
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
                                 similarity=sim)

    def describe(self, ckpt_path: str) -> str:
        """What classifies: ``ckpt_path``, or "an ensemble of N checkpoints"."""
        if isinstance(self.net, ProbabilityAverage):
            return f"an ensemble of {len(self.net.nets)} checkpoints"
        return str(ckpt_path)

    def predict(self, images: ImageInput | Sequence[ImageInput], topk: int = 3,
                progress: bool = False) -> list[Prediction]:
        """Classify paths and/or PIL images; ``progress`` shows a bar for long lists."""
        if isinstance(images, (str, Path, Image.Image)):
            images = [images]
        images = list(images)
        if not progress:
            return list(self.iter_predict(images, topk))
        results = []
        with Progress(transient=True) as bar:
            task = bar.add_task("Classifying", total=len(images))
            for prediction in self.iter_predict(images, topk):
                results.append(prediction)
                bar.advance(task)
        return results


def predictions_table(predictions: Sequence[Prediction], topk: int) -> tuple[list[str], list[list]]:
    """CSV header and rows: path, category (``unsure``/``unknown`` when held back), confidence,
    top-k categories and probabilities, the similarity (when scored), error."""
    header = ["path", "category", "confidence"]
    for k in range(1, topk + 1):
        header += [f"top{k}_category", f"top{k}_prob"]
    scored = any(p.similarity is not None for p in predictions)
    header += ["similarity", "error"] if scored else ["error"]
    rows = []
    for p in predictions:
        ranked = [cell for name, prob in p.topk for cell in (name, f"{prob:.6f}")]
        ranked += [""] * (2 * topk - len(ranked))
        confidence = f"{p.confidence:.6f}" if p.confidence is not None else ""
        similarity = ([f"{p.similarity:.6f}" if p.similarity is not None else ""] if scored else [])
        rows.append([p.source, p.category or "", confidence, *ranked, *similarity, p.error or ""])
    return header, rows


def write_predictions(predictions: Sequence[Prediction], path: str | Path, topk: int) -> Path:
    """Write predictions as CSV or JSON (by the file suffix), atomically."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        text = json.dumps([asdict(p) for p in predictions], indent=2) + "\n"
    else:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        header, rows = predictions_table(predictions, topk)
        writer.writerow(header)
        writer.writerows(rows)
        text = buffer.getvalue()
    write_text(path, text)
    return path


REVIEW_DIR = "_review"


def sort_into(predictions: Sequence[Prediction], directory: str | Path) -> int:
    """Copy each classified input file into ``directory/<category>/`` (held-back ones into
    ``directory/_review/``); never move or overwrite.

    Returns the number of files copied. A name already taken gets a ``-1``, ``-2``... suffix.
    """
    directory = Path(directory)
    copied = 0
    for p in predictions:
        if not p.ok or not os.path.isfile(p.source):
            continue
        target_dir = directory / (REVIEW_DIR if p.verdict else p.category)
        target_dir.mkdir(parents=True, exist_ok=True)
        source = Path(p.source)
        target = target_dir / source.name
        n = 0
        while target.exists():
            n += 1
            target = target_dir / f"{source.stem}-{n}{source.suffix}"
        shutil.copy2(source, target)
        copied += 1
    return copied


def save_predictions(predictions: Sequence[Prediction], output: str | Path, topk: int,
                     sort_dir: str | Path | None = None, gate: Gate | None = None) -> Path:
    """predict.py's outputs: the results file, copies into ``sort_dir`` (if given), with a gate
    ``review.csv`` and ``review.html`` next to the results, and the log lines that say what could
    not be read, what was held back and where everything went."""
    path = write_predictions(predictions, output, topk)
    if gate is not None and gate.active:
        from product_cnn.inference.review import write_review

        csv_path, html_path, held = write_review(predictions, path.parent, gate.describe())
        unknown = sum(p.verdict == "unknown" for p in predictions)
        log.info("Held back for review: %d of %d photo(s) (%d unsure, %d unknown; %s): %s, %s",
                 held, len(predictions), held - unknown, unknown, gate.describe(), csv_path, html_path)
    failed = [p for p in predictions if not p.ok]
    for p in failed:
        log.warning("Could not classify %s: %s", p.source, p.error)
    if sort_dir:
        copied = sort_into(predictions, sort_dir)
        log.info("Copied %d file(s) into %s/<category>/ (originals untouched)", copied, sort_dir)
    log.info("Classified %d of %d file(s); %d could not be read%s. Results: %s",
             len(predictions) - len(failed), len(predictions), len(failed),
             " (listed with their error in the results)" if failed else "", path)
    return path
