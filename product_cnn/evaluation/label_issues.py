"""Photos whose given label is most likely wrong, from a cross-validation's out-of-fold probabilities.

Two sources, in this order:

1. near-duplicate groups (the same product photographed twice, see :mod:`product_cnn.data.check`)
   whose photos carry different labels: certain conflicts, whatever the model says;
2. ``cleanlab.filter.find_label_issues`` over the out-of-fold probabilities (every photo
   predicted by the model that did not train on it), ranked by self-confidence, the
   probability the model gives the photo's own label, lowest first. ``filter_by`` picks which
   photos count as issues (default: those predicted as another class; see docs/data.md).

:func:`write_label_issues` writes ``label_issues.csv`` and ``label_issues.html``, a contact
sheet with the thumbnails embedded in the page: it opens in a browser with no server and
no network.
"""

from __future__ import annotations

import csv
import html
import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from product_cnn.atomic import write_text
from product_cnn.data.cache import default_cache_dir
from product_cnn.data.check import duplicate_groups, inspect_images
from product_cnn.data.thumbnails import CARD_CSS, thumbnail_uri
from product_cnn.errors import DataError
from product_cnn.evaluation.reports import prediction_columns

log = logging.getLogger(__name__)

CONFLICT = "near-duplicates with other labels"
MODEL = "out-of-fold prediction"


@dataclass
class LabelIssue:
    """One photo to review."""

    rank: int
    path: str  # relative to the data root
    label: str  # the label it was given
    suggested: str  # the most probable class out of fold
    self_confidence: float  # out-of-fold probability of the given label
    reason: str  # CONFLICT or MODEL
    group: int | None = None  # the conflicting near-duplicate group it belongs to


def read_cv(cv_dir: str | Path) -> tuple[list[dict[str, str]], list[str], str | None]:
    """The out-of-fold rows, class names and data root of a cross-validation sweep folder."""
    cv_dir = Path(cv_dir)
    summary_file, oof_file = cv_dir / "cv_summary.json", cv_dir / "oof_predictions.csv"
    if not summary_file.is_file() or not oof_file.is_file():
        raise DataError(f"{cv_dir} holds no cross-validation summary (cv_summary.json, oof_predictions.csv): "
                        "pass the sweep folder of  python train.py -m data.folds=5 'data.fold=range(5)'")
    summary = json.loads(summary_file.read_text())
    with oof_file.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise DataError(f"{oof_file} has no predictions: no fold of that sweep completed")
    return rows, summary["class_names"], summary.get("data_root")


def conflicting_groups(paths: Sequence[str], labels: Sequence[str], root: str,
                       cache_dir: str | Path | None = None) -> list[list[int]]:
    """Near-duplicate groups (as row indices) whose photos carry more than one label."""
    full = [os.path.join(root, p) for p in paths]
    order = sorted(range(len(full)), key=lambda i: full[i])  # the data check's order: its cache
    infos = inspect_images([full[i] for i in order], cache_dir or default_cache_dir())
    index = {path: i for i, path in enumerate(full)}
    groups = [[index[p] for p in group] for group in duplicate_groups(infos)]
    return [g for g in groups if len({labels[i] for i in g}) > 1]


def find_issues(rows: Sequence[dict[str, str]], class_names: Sequence[str], root: str,
                *, filter_by: str = "predicted_neq_given",
                cache_dir: str | Path | None = None) -> list[LabelIssue]:
    """Conflicting near-duplicate groups first, then cleanlab's issues by self-confidence."""
    from cleanlab.filter import find_label_issues

    names = list(class_names)
    paths = [r["path"] for r in rows]
    given = [r["label"] for r in rows]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise DataError(f"out-of-fold labels {unknown} are not among the classes {names}")
    labels = np.array([names.index(g) for g in given])
    probs = np.array([[float(r[c]) for c in prediction_columns(names)] for r in rows])
    probs = probs / probs.sum(axis=1, keepdims=True)  # the CSV's 6 decimals, summing to 1 again

    def issue(i: int, reason: str, group: int | None = None) -> LabelIssue:
        return LabelIssue(0, paths[i], given[i], names[int(probs[i].argmax())], float(probs[i, labels[i]]),
                          reason, group)

    issues = []
    for number, group in enumerate(conflicting_groups(paths, given, root, cache_dir), start=1):
        issues += [issue(i, CONFLICT, number) for i in sorted(group, key=lambda i: probs[i, labels[i]])]
    listed = {x.path for x in issues}
    ranked = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence",
                               filter_by=filter_by, n_jobs=1)
    issues += [issue(int(i), MODEL) for i in ranked if paths[int(i)] not in listed]
    for rank, item in enumerate(issues, start=1):
        item.rank = rank
    return issues


def _csv(issues: Sequence[LabelIssue]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["rank", "path", "given_label", "suggested_label", "self_confidence", "reason"])
    for x in issues:
        reason = f"{x.reason} (group {x.group})" if x.group else x.reason
        writer.writerow([x.rank, x.path, x.label, x.suggested, f"{x.self_confidence:.4f}", reason])
    return buffer.getvalue()


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Label issues: {title}</title>
<style>
{css}
.card.conflict {{ border-color: #c0392b; background: #fdf2f0; }}
.given {{ color: #c0392b; font-weight: 600; }} .suggested {{ color: #1e7d32; font-weight: 600; }}
</style></head><body>
<h1>Label issues: {title}</h1>
<p>{intro}</p>
{sections}
</body></html>
"""


def _cards(issues: Sequence[LabelIssue], root: str, side: int) -> str:
    cards = []
    for x in issues:
        uri = thumbnail_uri(os.path.join(root, x.path), side)
        image = f'<img src="{uri}" alt="{html.escape(x.path)}">' if uri else "<p>(unreadable)</p>"
        group = f" &middot; group {x.group}" if x.group else ""
        cards.append(
            f'<div class="card{" conflict" if x.reason == CONFLICT else ""}">{image}'
            f"<div>#{x.rank}{group}</div>"
            f'<div>given <span class="given">{html.escape(x.label)}</span></div>'
            f'<div>suggested <span class="suggested">{html.escape(x.suggested)}</span></div>'
            f"<div>p(given) {x.self_confidence:.3f}</div>"
            f'<div class="path">{html.escape(x.path)}</div></div>')
    return '<div class="grid">' + "\n".join(cards) + "</div>"


def _html(issues: Sequence[LabelIssue], root: str, total: int, side: int) -> str:
    conflicts = [x for x in issues if x.reason == CONFLICT]
    model = [x for x in issues if x.reason == MODEL]
    sections = []
    if conflicts:
        sections.append(f"<h2>Near-duplicates with different labels ({len(conflicts)} photos)</h2>"
                        + _cards(conflicts, root, side))
    sections.append(f"<h2>Most likely mislabelled ({len(model)} photos, most likely first)</h2>"
                    + (_cards(model, root, side) if model else "<p>None found.</p>"))
    intro = (f"{len(issues)} of {total} photos flagged in {html.escape(root)}. To correct labels, write a "
             "CSV with the columns <code>path,label</code> (a class, or <code>exclude</code>) and train "
             "with <code>data.relabel=&lt;that csv&gt;</code>: the photos themselves are never changed.")
    return _PAGE.format(title=html.escape(root), intro=intro, sections="\n".join(sections), css=CARD_CSS)


def write_label_issues(cv_dir: str | Path, *, data_root: str | None = None,
                       output_dir: str | Path | None = None,
                       filter_by: str = "predicted_neq_given", thumbnail: int = 160,
                       cache_dir: str | Path | None = None) -> tuple[Path, Path, list[LabelIssue]]:
    """Find the issues of the sweep in ``cv_dir``; write label_issues.csv and .html (default: into it)."""
    rows, names, recorded_root = read_cv(cv_dir)
    root = str(Path(data_root or recorded_root or "").expanduser())
    if not root or not Path(root).is_dir():
        raise DataError(f"the photos of {cv_dir} are not at {root or '(no data root recorded)'}: "
                        "pass data_root=/path/to/photos")
    issues = find_issues(rows, names, root, filter_by=filter_by, cache_dir=cache_dir)
    out = Path(output_dir or cv_dir)
    csv_path, html_path = out / "label_issues.csv", out / "label_issues.html"
    write_text(csv_path, _csv(issues))
    write_text(html_path, _html(issues, root, len(rows), thumbnail))
    conflicts = sum(x.reason == CONFLICT for x in issues)
    log.info("%d of %d photos flagged (%d in near-duplicate groups with different labels): %s, %s",
             len(issues), len(rows), conflicts, csv_path, html_path)
    return csv_path, html_path, issues
