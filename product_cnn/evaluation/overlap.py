"""Where a shop's categories overlap, from a k-fold sweep's out-of-fold predictions.

A pair of categories that the model and the labels confuse in both directions, photo after photo,
is usually not a weak model but an unwritten rule ("are paintings Artifacts or Home?"). The
report ranks the pairs by how many out-of-fold photos of one were filed under the other, shows
those photos side by side with typical photos of each (``cv_overlap.html``, thumbnails embedded:
it opens offline) and lists them in ``cv_overlap.csv`` (``path,label,...``): correct the ``label``
column (a class, or ``exclude``) and train with ``data.relabel=cv_overlap.csv``.

It also reports accuracy on the photos whose label cleanlab does not doubt (``filter_by=
"prune_by_noise_rate"``: the photos most confidently predicted as another class beyond the
estimated noise rate of their pair are doubted), so the model's own error shows apart from the
labels'. (``predicted_neq_given``, label_issues.py's default, would doubt every wrong
prediction and make that accuracy 1 by construction.)
"""

from __future__ import annotations

import csv
import html
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from product_cnn.atomic import write_text
from product_cnn.data.thumbnails import CARD_CSS, thumbnail_uri
from product_cnn.evaluation.reports import prediction_columns

log = logging.getLogger(__name__)

MAX_PAIRS = 5  # pairs reported
MIN_CONFUSED = 2  # a pair needs at least this many photos filed across it to count as overlapping
TYPICAL = 4  # photos shown per category as what the model thinks it is
HTML_FILE, CSV_FILE = "cv_overlap.html", "cv_overlap.csv"


def _arrays(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    probs = np.array([[float(r[c]) for c in prediction_columns(names)] for r in rows])
    return probs / probs.sum(1, keepdims=True), np.array([list(names).index(r["label"]) for r in rows])


def overlapping_pairs(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> list[dict[str, Any]]:
    """The class pairs with at least :data:`MIN_CONFUSED` out-of-fold photos filed across them,
    most first (ties: the larger share of each side's probability given to the other)."""
    probs, labels = _arrays(rows, names)
    predicted = probs.argmax(1)
    pairs = []
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            a_as_b = np.flatnonzero((labels == a) & (predicted == b))
            b_as_a = np.flatnonzero((labels == b) & (predicted == a))
            sides = (labels == a) | (labels == b)
            shared = float((probs[labels == a, b].sum() + probs[labels == b, a].sum()) / max(1, sides.sum()))
            if len(a_as_b) + len(b_as_a) >= MIN_CONFUSED:
                pairs.append({"a": names[a], "b": names[b], "a_as_b": a_as_b.tolist(),
                              "b_as_a": b_as_a.tolist(), "confused": int(len(a_as_b) + len(b_as_a)),
                              "photos": int(sides.sum()), "shared_probability": shared})
    pairs.sort(key=lambda p: (-p["confused"], -p["shared_probability"]))
    return pairs[:MAX_PAIRS]


def undoubted_accuracy(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, Any] | None:
    """Accuracy on the photos cleanlab does not doubt (``prune_by_noise_rate``), or None where it
    cannot say (a class with too few photos)."""
    from cleanlab.filter import find_label_issues

    probs, labels = _arrays(rows, names)
    try:
        doubted = find_label_issues(labels, probs, filter_by="prune_by_noise_rate", n_jobs=1)
    except (ValueError, IndexError) as err:  # e.g. a class with a single photo
        log.warning("Overlap report: cleanlab cannot estimate the label noise here (%s)", err)
        return None
    kept = ~doubted
    correct = probs.argmax(1) == labels
    return {"doubted": int(doubted.sum()), "photos": len(labels), "accuracy_all": float(correct.mean()),
            "accuracy_undoubted": float(correct[kept].mean()) if kept.any() else float("nan"),
            "filter_by": "prune_by_noise_rate"}


def overlap_section(rows: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """The summary's ``overlap``: the pairs (row indices into ``rows``) and the undoubted accuracy."""
    return {"pairs": overlapping_pairs(rows, names), "labels": undoubted_accuracy(rows, names)}


def overlap_lines(section: dict[str, Any]) -> list[str]:
    """cv_report.md's lines for the section."""
    lines = ["## Where the categories overlap", ""]
    pairs = section["pairs"]
    if not pairs:
        lines.append(f"No pair of categories has {MIN_CONFUSED} or more photos filed across it.")
    else:
        lines += ["pair | filed across | of photos | a as b | b as a | probability shared",
                  "---|---|---|---|---|---"]
        for p in pairs:
            lines.append(f"{p['a']} / {p['b']} | {p['confused']} | {p['photos']} | {len(p['a_as_b'])} | "
                         f"{len(p['b_as_a'])} | {p['shared_probability']:.3f}")
        lines += ["", f"The photos on each side: `{HTML_FILE}`. Decide a rule for each pair, correct the "
                      f"`label` column of `{CSV_FILE}` (a class, or `exclude`) and train with "
                      f"`data.relabel={CSV_FILE}`: the photos themselves are never changed."]
    doubt = section.get("labels")
    if doubt:
        kept = doubt["photos"] - doubt["doubted"]
        lines += ["", f"Labels: cleanlab (prune_by_noise_rate) doubts {doubt['doubted']} of "
                      f"{doubt['photos']} labels; accuracy on the other {kept} photos: "
                      f"{doubt['accuracy_undoubted']:.3f} (on all: {doubt['accuracy_all']:.3f})."]
    return lines


def _card(row: dict[str, Any], root: str, names: Sequence[str], side: int) -> str:
    probs = {n: float(row[c]) for n, c in zip(names, prediction_columns(names), strict=True)}
    guess = max(probs, key=probs.get)
    uri = thumbnail_uri(os.path.join(root, row["path"]), side)
    image = f'<img src="{uri}" alt="{html.escape(row["path"])}">' if uri else "<p>(not found)</p>"
    return (f'<div class="card">{image}<div>label <b>{html.escape(row["label"])}</b>, filed as '
            f'<b>{html.escape(guess)}</b> {probs[guess]:.2f}</div>'
            f'<div class="path">{html.escape(row["path"])}</div></div>')


def _typical(rows: Sequence[dict[str, Any]], names: Sequence[str], name: str) -> list[dict[str, Any]]:
    """The photos of ``name`` the model is surest are ``name``."""
    column = prediction_columns(names)[list(names).index(name)]
    own = [r for r in rows if r["label"] == name]
    return sorted(own, key=lambda r: -float(r[column]))[:TYPICAL]


def overlap_html(section: dict[str, Any], rows: Sequence[dict[str, Any]], names: Sequence[str], root: str,
                 side: int = 140) -> str:
    """The contact sheet: per pair, the photos filed across it both ways and typical ones of each."""
    parts = []
    for p in section["pairs"]:
        grid = ["<div class='grid'>" + "".join(_card(rows[i], root, names, side) for i in items) + "</div>"
                for items in (p["a_as_b"], p["b_as_a"])]
        typical = ["<div class='grid'>" + "".join(_card(r, root, names, side)
                                                   for r in _typical(rows, names, n))
                   + "</div>" for n in (p["a"], p["b"])]
        a, b = html.escape(p["a"]), html.escape(p["b"])
        parts.append(f"<h2>{a} / {b}: {p['confused']} of {p['photos']} photos filed across</h2>"
                     f"<h3>{a} filed as {b} ({len(p['a_as_b'])})</h3>{grid[0]}"
                     f"<h3>{b} filed as {a} ({len(p['b_as_a'])})</h3>{grid[1]}"
                     f"<h3>Typical {a}</h3>{typical[0]}<h3>Typical {b}</h3>{typical[1]}")
    body = "\n".join(parts) or "<p>No pair of categories overlaps.</p>"
    table = "".join(f"<tr><td>{html.escape(p['a'])} / {html.escape(p['b'])}</td><td>{p['confused']}</td>"
                    f"<td>{p['photos']}</td><td>{p['shared_probability']:.3f}</td></tr>"
                    for p in section["pairs"])
    notes = [line for line in overlap_lines(section)[2:] if line and "|" not in line]  # not the table
    intro = ("<table><tr><th>pair</th><th>filed across</th><th>of photos</th><th>probability shared</th></tr>"
             f"{table}</table>" + "".join(f"<p>{html.escape(n.replace('`', ''))}</p>" for n in notes))
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Where the categories overlap"
            f"</title><style>{CARD_CSS}</style></head><body><h1>Where the categories overlap</h1>"
            f"{intro}{body}</body></html>\n")


def overlap_csv(section: dict[str, Any], rows: Sequence[dict[str, Any]], names: Sequence[str]) -> str:
    """``path,label,given,filed_as,pair``: a data.relabel file once ``label`` is corrected."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "label", "given", "filed_as", "pair"])
    columns = prediction_columns(names)
    for p in section["pairs"]:
        for i in p["a_as_b"] + p["b_as_a"]:
            row = rows[i]
            guess = names[int(np.argmax([float(row[c]) for c in columns]))]
            writer.writerow([row["path"], row["label"], row["label"], guess, f"{p['a']} / {p['b']}"])
    return buffer.getvalue()


def write_overlap(out: str | Path, section: dict[str, Any], rows: Sequence[dict[str, Any]],
                  names: Sequence[str], root: str | None) -> list[Path]:
    """``cv_overlap.html`` (when the photos are at ``root``) and ``cv_overlap.csv`` into ``out``."""
    out = Path(out)
    written = [out / CSV_FILE]
    write_text(out / CSV_FILE, overlap_csv(section, rows, names))
    if root and Path(root).is_dir():
        write_text(out / HTML_FILE, overlap_html(section, rows, names, root))
        written.append(out / HTML_FILE)
    return written
