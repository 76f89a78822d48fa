"""The photos a person should look at, after predict.py: ``review.csv`` (``path,label`` with the
best guess filled in, ready for ``train.py data.extra=review.csv`` once corrected) and
``review.html`` (an offline contact sheet: thumbnails, the top 3 categories, most doubtful first)."""

from __future__ import annotations

import csv
import html
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from product_cnn.atomic import write_text
from product_cnn.confidence.gate import UNKNOWN
from product_cnn.data.thumbnails import CARD_CSS, thumbnail_uri

log = logging.getLogger(__name__)

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Needs review: {count} photos</title>
<style>
{css}
.card.unknown {{ border-color: #c0392b; background: #fdf2f0; }}
.why {{ font-weight: 600; }}
.near {{ display: flex; gap: 4px; margin-top: 6px; }}
.near figure {{ margin: 0; width: 56px; font-size: 10px; text-align: center; }}
.near img {{ max-width: 56px; max-height: 56px; margin: 0 auto; }}
</style></head><body>
<h1>Needs review: {count} photos</h1>
<p>{intro}</p>
<div class="grid">
{cards}
</div>
</body></html>
"""


def needs_review(predictions: Sequence[Any]) -> list[Any]:
    """The held-back predictions (``Prediction``), most doubtful first: unknown ones (least similar
    first), then unsure ones (least confident first)."""
    held = [p for p in predictions if p.ok and p.verdict]
    return sorted(held, key=lambda p: (p.verdict != UNKNOWN,
                                       p.similarity if p.verdict == UNKNOWN else p.confidence))


def review_csv(items: Sequence[Any]) -> str:
    """``path,label`` (absolute path, the best guess) plus why and how sure, one row per photo."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "label", "verdict", "confidence", "similarity"])
    for p in items:
        writer.writerow([os.path.abspath(p.source), p.topk[0][0], p.verdict, f"{p.confidence:.4f}",
                         "" if p.similarity is None else f"{p.similarity:.4f}"])
    return buffer.getvalue()


def review_html(items: Sequence[Any], gate: str, side: int = 160) -> str:
    cards = []
    for p in items:
        uri = thumbnail_uri(p.source, side)
        image = f'<img src="{uri}" alt="{html.escape(p.source)}">' if uri else "<p>(unreadable)</p>"
        why = "none of these (unknown)" if p.verdict == UNKNOWN else "unsure"
        ranked = "".join(f"<div>{html.escape(name)} {prob:.3f}</div>" for name, prob in p.topk[:3])
        score = f"<div>similarity {p.similarity:.3f}</div>" if p.similarity is not None else ""
        heat = thumbnail_uri(p.heatmap, side) if p.heatmap else None
        where = f'<img src="{heat}" alt="where the network looked" title="where the network looked">' \
            if heat else ""
        cards.append(f'<div class="card {p.verdict}">{image}{where}<div class="why">{why}</div>{ranked}'
                     f'{score}{_nearest(p.nearest)}<div class="path">{html.escape(p.source)}</div></div>')
    intro = (f"Held back by: {html.escape(gate)}. To train on them, correct the <code>label</code> column of "
             "<code>review.csv</code> (a class, or <code>exclude</code> to leave a photo out) and run "
             "<code>python train.py data.extra=review.csv</code>: the photos themselves are never changed.")
    return _PAGE.format(count=len(items), intro=intro, css=CARD_CSS,
                        cards="\n".join(cards) or "<p>Nothing to review.</p>")


def _nearest(found: Sequence[tuple[str, str, float]], side: int = 56) -> str:
    """The nearest training photos: thumbnails (where the files are here) with their labels."""
    if not found:
        return ""
    figures = []
    for category, photo, sim in found:
        uri = thumbnail_uri(photo, side)
        image = f'<img src="{uri}" alt="{html.escape(photo)}">' if uri else ""
        figures.append(f'<figure title="{html.escape(photo)}">{image}<figcaption>{html.escape(category)} '
                       f'{sim:.2f}</figcaption></figure>')
    return f'<div>nearest training photos:</div><div class="near">{"".join(figures)}</div>'


def write_review(predictions: Sequence[Any], out_dir: str | Path, gate: str) -> tuple[Path, Path, int]:
    """Write ``review.csv`` and ``review.html`` into ``out_dir``; return their paths and the count.
    An existing ``review.csv`` (perhaps already corrected by a person) is kept as ``review.N.csv``."""
    items = needs_review(predictions)
    csv_path, html_path = Path(out_dir) / "review.csv", Path(out_dir) / "review.html"
    if csv_path.exists():
        n = 1
        while (kept := csv_path.with_name(f"review.{n}.csv")).exists():
            n += 1
        os.replace(csv_path, kept)
        log.warning("Kept the previous %s as %s", csv_path, kept.name)
    write_text(csv_path, review_csv(items))
    write_text(html_path, review_html(items, gate))
    return csv_path, html_path, len(items)
