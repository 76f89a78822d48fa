"""What predict.py writes: one result per photo, the CSV or JSON of them, the copies sorted
into category folders, and the log lines. Plain Python: exported models predict without torch."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from product_cnn.atomic import write_text

if TYPE_CHECKING:
    from product_cnn.confidence.gate import Gate

log = logging.getLogger(__name__)


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
    nearest: list[tuple[str, str, float]] = field(default_factory=list)  # (category, photo, similarity)
    heatmap: str | None = None  # explain=true: the overlay PNG of where the network looked

    @property
    def ok(self) -> bool:
        return self.error is None


def collect(predictions: Iterator[Prediction], total: int, progress: bool = False) -> list[Prediction]:
    """The results of an ``iter_predict``, with a progress bar (``progress``) for long lists."""
    if not progress:
        return list(predictions)
    from rich.progress import Progress

    results = []
    with Progress(transient=True) as bar:
        task = bar.add_task("Classifying", total=total)
        for prediction in predictions:
            results.append(prediction)
            bar.advance(task)
    return results


def predictions_table(predictions: Sequence[Prediction], topk: int) -> tuple[list[str], list[list]]:
    """CSV header and rows: path, category (``unsure``/``unknown`` when held back), confidence,
    top-k categories and probabilities, the similarity (when scored), the nearest training photos
    (category, photo, similarity; when the checkpoint names them), the heatmap (explain=true), error."""
    header = ["path", "category", "confidence"]
    for k in range(1, topk + 1):
        header += [f"top{k}_category", f"top{k}_prob"]
    scored = any(p.similarity is not None for p in predictions)
    header += ["similarity"] if scored else []
    shown = max((len(p.nearest) for p in predictions), default=0)
    for k in range(1, shown + 1):
        header += [f"nearest{k}_category", f"nearest{k}_photo", f"nearest{k}_similarity"]
    explained = any(p.heatmap for p in predictions)
    header += ["heatmap"] if explained else []
    header += ["error"]
    rows = []
    for p in predictions:
        ranked = [cell for name, prob in p.topk for cell in (name, f"{prob:.6f}")]
        ranked += [""] * (2 * topk - len(ranked))
        confidence = f"{p.confidence:.6f}" if p.confidence is not None else ""
        similarity = ([f"{p.similarity:.6f}" if p.similarity is not None else ""] if scored else [])
        near = [str(cell) for item in p.nearest for cell in item] + [""] * (3 * (shown - len(p.nearest)))
        heatmap = [p.heatmap or ""] if explained else []
        rows.append([p.source, p.category or "", confidence, *ranked, *similarity, *near, *heatmap,
                     p.error or ""])
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


def save_predictions(predictions: Sequence[Prediction], output: str | Path, topk: int, *,
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
