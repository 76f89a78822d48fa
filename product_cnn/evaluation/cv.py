"""Cross-validation summary: the folds of a k-fold sweep pooled into one report.

Each fold's run leaves ``metrics.json`` and ``test_predictions.csv`` in its folder (see
:class:`product_cnn.evaluation.callbacks.ReportWriter`). :func:`write_cv_summary` reads them from a sweep
folder and writes, next to the runs:

* ``cv_summary.json``: per fold and mean +- standard deviation (over folds, n-1) of accuracy,
  macro F1 and per-class recall; the pooled out-of-fold report; the failed or missing folds.
* ``cv_report.md``: the same as tables, and the pooled classification report.
* ``cv_confusion.png``: the pooled out-of-fold confusion matrix.
* ``oof_predictions.csv``: one row per photo (path relative to the data root, label,
  predicted, fold, the probability of every class), each predicted by the model that never saw it.
* ``calibration.png``, ``coverage.png`` (when the folds were calibrated): the out-of-fold
  reliability diagram and accuracy-coverage curve; the numbers are in the summary and report.
* ``cv_overlap.html``, ``cv_overlap.csv``: where the categories overlap
  (:mod:`product_cnn.evaluation.overlap`), also a section of the report.

A sweep that varies something besides ``data.fold`` gets one summary per setting, in
``cv_<setting>/`` subfolders.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from product_cnn.atomic import write_text
from product_cnn.confidence.temperature import calibrated_probs, calibration_error, fit_temperature
from product_cnn.errors import DataError
from product_cnn.evaluation.confidence_report import (
    confidence_lines,
    confidence_section,
)
from product_cnn.evaluation.overlap import overlap_lines, overlap_section, write_overlap
from product_cnn.evaluation.reports import (
    PREDICTIONS_FILE,
    build_report,
    confusion_matrix_figure,
    format_classification_report,
    prediction_columns,
    raw_columns,
    save_figure,
    write_confidence_figures,
)

log = logging.getLogger(__name__)

ERROR_FILE = "error.txt"  # written into a job's folder when it failed (see tasks.run)
SUMMARY_FILES = ("cv_summary.json", "cv_report.md", "cv_confusion.png", "oof_predictions.csv")  # + figures


@dataclass
class FoldRun:
    """One fold's run folder and what it left."""

    fold: int
    folds: int
    job_dir: Path
    setting: tuple[str, ...]  # the job's overrides other than data.fold
    metrics: dict[str, Any] | None = None
    rows: list[dict[str, str]] = field(default_factory=list)  # its test_predictions.csv
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.metrics is not None


def find_fold_runs(sweep_dir: str | Path) -> list[FoldRun]:
    """Every job folder of ``sweep_dir`` that ran with ``data.folds`` set, with its results."""
    runs = []
    for job in sorted(Path(sweep_dir).iterdir(), key=lambda p: (len(p.name), p.name)):
        config = job / ".hydra" / "config.yaml"
        if not job.is_dir() or not config.is_file():
            continue
        data = OmegaConf.load(config).get("data") or {}
        if data.get("folds") is None:
            continue
        overrides = OmegaConf.load(job / ".hydra" / "overrides.yaml") if \
            (job / ".hydra" / "overrides.yaml").is_file() else []
        setting = tuple(str(o) for o in overrides if not str(o).startswith("data.fold="))
        run = FoldRun(int(data.get("fold", 0)), int(data["folds"]), job, setting)
        metrics, predictions = job / "metrics.json", job / PREDICTIONS_FILE
        if metrics.is_file() and predictions.is_file():
            run.metrics = json.loads(metrics.read_text())
            with predictions.open(newline="") as handle:
                run.rows = list(csv.DictReader(handle))
        elif (job / ERROR_FILE).is_file():
            run.error = (job / ERROR_FILE).read_text().strip() or "failed"
        else:
            run.error = f"did not finish: no test report in {job}"
        runs.append(run)
    return runs


def _mean_sd(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values) if values else float("nan"),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def _fold_means(per_fold: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Mean +- sd over the folds of accuracy, macro F1 and each class's recall."""
    return {
        "accuracy": _mean_sd([f["accuracy"] for f in per_fold]),
        "macro_f1": _mean_sd([f["macro_f1"] for f in per_fold]),
        "recall": {n: _mean_sd([f["recall"][n] for f in per_fold]) for n in names},
    }


def summarize(runs: list[FoldRun]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The summary dict and the out-of-fold rows of one setting's fold runs."""
    done = [r for r in runs if r.ok]
    folds = max(r.folds for r in runs)
    names: list[str] = done[0].metrics["class_names"] if done else []
    if any(r.metrics["class_names"] != names for r in done):
        raise ValueError("the folds were trained on different class lists")
    per_fold = [{
        "fold": r.fold, "run": str(r.job_dir), "test_photos": r.metrics["num_samples"],
        "accuracy": r.metrics["accuracy"], "macro_f1": r.metrics["macro"]["f1"],
        "recall": {n: r.metrics["per_class"][n]["recall"] for n in names},
    } for r in sorted(done, key=lambda r: r.fold)]
    seen = {r.fold for r in runs}
    summary: dict[str, Any] = {
        "folds": folds,
        "setting": list(runs[0].setting),
        "data_root": done[0].metrics.get("data_root") if done else None,
        "class_names": names,
        "completed": sorted(r.fold for r in done),
        "failed": [{"fold": r.fold, "run": str(r.job_dir), "error": r.error}
                   for r in sorted(runs, key=lambda r: r.fold) if not r.ok],
        "missing": [k for k in range(folds) if k not in seen],
        "per_fold": per_fold,
        "mean_sd": _fold_means(per_fold, names),
    }
    oof = [{**row, "fold": r.fold} for r in sorted(done, key=lambda r: r.fold) for row in r.rows]
    if oof:
        summary["pooled"] = _report(oof, names)
        summary["overlap"] = overlap_section(oof, names)
    if oof and all(c in oof[0] for c in raw_columns(names)):
        temperatures = [r.metrics.get("confidence", {}).get("temperature", 1.0)
                        for r in sorted(done, key=lambda r: r.fold)]
        probs, raw, labels = oof_arrays(oof, names)
        folds = torch.tensor([int(row["fold"]) for row in oof])
        summary["confidence"] = _oof_confidence(probs, raw, labels, folds, temperatures)
    return summary, oof


def oof_arrays(rows: list[dict[str, Any]], names: list[str]
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(probabilities, probabilities before temperature scaling, labels) of prediction rows."""
    probs = torch.tensor([[float(row[c]) for c in prediction_columns(names)] for row in rows])
    raw = torch.tensor([[float(row[c]) for c in raw_columns(names)] for row in rows])
    return probs, raw, torch.tensor([names.index(row["label"]) for row in rows])


def _oof_confidence(probs: torch.Tensor, raw: torch.Tensor, labels: torch.Tensor, folds: torch.Tensor,
                    temperatures: list[float]) -> dict[str, Any]:
    """The pooled confidence section: each fold scaled by its own temperature; and, for comparison,
    one temperature fitted on the other folds' out-of-fold predictions (the log of their raw
    probabilities as logits), which needs no validation split."""
    section = confidence_section(probs, raw, labels=labels, temperature=temperatures)
    logits = raw.double().clamp_min(1e-12).log()
    cross = torch.zeros_like(probs)
    for k in folds.unique():
        held = folds == k
        if (~held).any():
            cross[held] = calibrated_probs(logits[held], fit_temperature(logits[~held], labels[~held]))
    section["oof_temperature"] = fit_temperature(logits, labels)
    section["ece_after_oof_temperature"] = calibration_error(cross, labels)
    return section


def _report(rows: list[dict[str, Any]], names: list[str],
            probs: torch.Tensor | None = None) -> dict[str, Any]:
    """The classification report of prediction rows (their probability columns unless ``probs``)."""
    from product_cnn.training.stage_metrics import report_metrics  # torchmetrics: only when summarising

    if probs is None:
        probs = torch.tensor([[float(row[c]) for c in prediction_columns(names)] for row in rows])
    labels = torch.tensor([names.index(row["label"]) for row in rows])
    metrics = report_metrics(len(names))
    metrics.update(probs, labels)
    return build_report(metrics.compute(), names)


def ensemble_summary(sweeps: list[str | Path]) -> dict[str, Any]:
    """What averaging the probabilities of several k-fold sweeps' models would have scored.

    Each sweep folder holds an ``oof_predictions.csv`` (:func:`write_cv_summary`) over the same
    photos, folds and classes; the folds that every sweep completed count. Every photo's
    probabilities are averaged over the sweeps, so each is still predicted only by models that
    did not train on it. Returns the result keys of :func:`summarize` (per fold, mean +- sd,
    pooled). Sweeps that do not fit together are refused with :class:`DataError`.
    """
    tables = []
    for sweep in map(Path, sweeps):
        path = sweep / "oof_predictions.csv"
        if not path.is_file():
            raise DataError(f"no oof_predictions.csv in {sweep}: give the folder of one setting's summary")
        with path.open(newline="") as handle:
            tables.append({row["path"]: row for row in csv.DictReader(handle)})
    names = [c.removeprefix("prob_") for c in next(iter(tables[0].values())) if c.startswith("prob_")]
    seen = [{row["fold"] for row in table.values()} for table in tables]
    common, folds_in_split = set.intersection(*seen), 1 + max(int(k) for k in set.union(*seen))
    if not common:
        raise DataError(f"the sweeps {', '.join(map(str, sweeps))} have no fold in common")
    tables = [{p: row for p, row in table.items() if row["fold"] in common} for table in tables]
    first = tables[0]
    for sweep, table in zip(sweeps[1:], tables[1:], strict=True):
        if set(table) != set(first):
            raise DataError(f"{sweep} predicted other photos than {sweeps[0]}: not the same data or folds")
        moved = [p for p in first
                 if (table[p]["label"], table[p]["fold"]) != (first[p]["label"], first[p]["fold"])]
        if moved:
            raise DataError(f"{sweep} has {moved[0]} in another fold or class than {sweeps[0]}")
        if [c.removeprefix("prob_") for c in next(iter(table.values())) if c.startswith("prob_")] != names:
            raise DataError(f"{sweep} was trained on other classes than {sweeps[0]}")
    rows = [first[p] for p in sorted(first)]

    def mean_of(columns: list[str]) -> torch.Tensor:
        return torch.stack([torch.tensor([[float(t[r["path"]][c]) for c in columns] for r in rows])
                            for t in tables]).mean(0)

    probs = mean_of(prediction_columns(names))
    folds = sorted({int(r["fold"]) for r in rows})
    per_fold = []
    for k in folds:
        index = [i for i, r in enumerate(rows) if int(r["fold"]) == k]
        report = _report([rows[i] for i in index], names, probs[index])
        per_fold.append({"fold": k, "test_photos": len(index), "accuracy": report["accuracy"],
                         "macro_f1": report["macro"]["f1"],
                         "recall": {n: report["per_class"][n]["recall"] for n in names}})
    summary = {
        "setting": ["ensemble of", *map(str, sweeps)],
        "class_names": names,
        "folds": folds_in_split,
        "completed": folds,
        "per_fold": per_fold,
        "mean_sd": _fold_means(per_fold, names),
        "pooled": _report(rows, names, probs),
    }
    if all(c in next(iter(t.values())) for t in tables for c in raw_columns(names)):
        labels = torch.tensor([names.index(r["label"]) for r in rows])
        fold_of = torch.tensor([int(r["fold"]) for r in rows])
        summary["confidence"] = _oof_confidence(probs, mean_of(raw_columns(names)), labels, fold_of, [])
    return summary


def _markdown(summary: dict[str, Any]) -> str:
    names = summary["class_names"]
    short = [n[:12] for n in names]
    lines = [f"# Cross-validation: {len(summary['completed'])} of {summary['folds']} folds", ""]
    if summary["setting"]:
        lines += [f"Setting: `{' '.join(summary['setting'])}`", ""]
    if summary["failed"] or summary["missing"]:
        for f in summary["failed"]:
            lines.append(f"- **fold {f['fold']} failed**: {f['error']} ({f['run']})")
        for k in summary["missing"]:
            lines.append(f"- **fold {k} missing**: no run of it in this sweep")
        lines += ["", "The summary counts the completed folds only.", ""]
    header = "| fold | test photos | accuracy | macro F1 | " + " | ".join(f"recall {n}" for n in short) + " |"
    lines += [header, "|" + "---|" * (4 + len(names))]
    for f in summary["per_fold"]:
        recalls = " | ".join(f"{f['recall'][n]:.3f}" for n in names)
        lines.append(f"| {f['fold']} | {f['test_photos']} | {f['accuracy']:.3f} | {f['macro_f1']:.3f} "
                     f"| {recalls} |")
    m = summary["mean_sd"]

    def ms(x: dict[str, float]) -> str:
        return f"{x['mean']:.3f} +- {x['sd']:.3f}"

    recalls = " | ".join(ms(m["recall"][n]) for n in names)
    lines.append(f"| mean +- sd | | {ms(m['accuracy'])} | {ms(m['macro_f1'])} | {recalls} |")
    if "pooled" in summary:
        pooled = summary["pooled"]
        lines += ["", f"## Pooled out-of-fold report ({pooled['num_samples']} photos, each predicted once, "
                      "by the model that did not train on it)", "", "```",
                  format_classification_report(pooled).rstrip(), "```", "",
                  "Confusion matrix: `cv_confusion.png`; every photo's probabilities: `oof_predictions.csv`."]
    if "confidence" in summary:
        c = summary["confidence"]
        lines += ["", "## Confidence (out of fold)", "", *confidence_lines(c), "",
                  f"One temperature fitted on the other folds' out-of-fold predictions instead: ECE "
                  f"{c['ece_after_oof_temperature']:.4f} (on all of them: T = {c['oof_temperature']:.3f})."]
    if "overlap" in summary:
        lines += ["", *overlap_lines(summary["overlap"])]
    lines += ["", "mean +- sd: over the completed folds, sample standard deviation (n-1)."]
    return "\n".join(lines) + "\n"


def _csv(rows: list[dict[str, Any]], names: list[str]) -> str:
    buffer = io.StringIO()
    raw = raw_columns(names) if rows and all(c in rows[0] for c in raw_columns(names)) else []
    writer = csv.DictWriter(buffer, ["path", "label", "predicted", "fold", *prediction_columns(names), *raw],
                            extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _slug(setting: tuple[str, ...]) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", "_".join(setting))[:120] or "default"


def write_cv_summary(sweep_dir: str | Path) -> list[Path]:
    """Write the summary files for every k-fold setting found in ``sweep_dir``; return the folders."""
    sweep_dir = Path(sweep_dir)
    runs = find_fold_runs(sweep_dir)
    settings: dict[tuple[str, ...], list[FoldRun]] = {}
    for run in runs:
        settings.setdefault(run.setting, []).append(run)
    written = []
    for setting, group in settings.items():
        out = sweep_dir if len(settings) == 1 else sweep_dir / f"cv_{_slug(setting)}"
        summary, oof = summarize(group)
        write_text(out / "cv_summary.json", json.dumps(summary, indent=2) + "\n")
        write_text(out / "cv_report.md", _markdown(summary))
        write_text(out / "oof_predictions.csv", _csv(oof, summary["class_names"]))
        if "pooled" in summary:
            pooled = summary["pooled"]
            save_figure(out / "cv_confusion.png", confusion_matrix_figure(
                np.asarray(pooled["confusion_matrix"]), pooled["class_names"],
                title=f"Out-of-fold, {len(summary['completed'])} folds"))
        if "confidence" in summary:
            write_confidence_figures(out, *oof_arrays(oof, summary["class_names"]))
        if "overlap" in summary:
            write_overlap(out, summary["overlap"], oof, summary["class_names"], summary["data_root"])
        m = summary["mean_sd"]
        log.info("Cross-validation (%d of %d folds): accuracy %.3f +- %.3f, macro F1 %.3f +- %.3f; "
                 "pooled accuracy %.3f. Summary: %s", len(summary["completed"]), summary["folds"],
                 m["accuracy"]["mean"], m["accuracy"]["sd"], m["macro_f1"]["mean"], m["macro_f1"]["sd"],
                 summary.get("pooled", {}).get("accuracy", float("nan")), out / "cv_report.md")
        written.append(out)
    return written


def sweep_of(run_dir: str | Path) -> Path | None:
    """The sweep folder a k-fold run folder belongs to (it holds Hydra's ``multirun.yaml``)."""
    parent = Path(run_dir).resolve().parent
    return parent if (parent / "multirun.yaml").is_file() else None

