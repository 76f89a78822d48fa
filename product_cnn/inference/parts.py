"""Prediction at catalogue scale: the inputs cut into parts of ``part_size`` photos, each process
(rank) classifying its own parts (part i goes to rank ``i % world_size``), one CSV per part in
``<output stem>.parts/``, merged into ``output`` (and Parquet beside it when pyarrow is installed)
by whichever rank finishes last. A run started again keeps every finished part."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from product_cnn.atomic import atomic_path, write_text
from product_cnn.errors import ProductCNNError
from product_cnn.inference.results import sort_into, write_predictions

log = logging.getLogger(__name__)

PLAN = "plan.json"


def rank_and_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """This process's rank and the number of processes: as given, else from torchrun's or SLURM's
    variables (``RANK``/``WORLD_SIZE``, ``SLURM_PROCID``/``SLURM_NTASKS``), else (0, 1)."""
    env = os.environ
    if world_size is None:
        world_size = int(env.get("WORLD_SIZE") or env.get("SLURM_NTASKS") or 1)
    if rank is None:
        rank = int(env.get("RANK") or env.get("SLURM_PROCID") or 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ProductCNNError(f"rank={rank} world_size={world_size}: the rank must be in 0..world_size-1")
    return rank, world_size


@dataclass(frozen=True)
class PartsPlan:
    """This process's rank, the number of processes, and the part size (None: one pass, no parts)."""

    rank: int
    world: int
    part_size: int | None


def plan_parts(*, rank: int | None, world_size: int | None, parts: int | None, output: str | Path,
               run_dir: str | Path, explain: bool = False) -> PartsPlan:
    """Parts of ``parts`` photos (10,000 by default when several processes share the work); refuses a
    per-run ``output`` under several processes (each has its own run folder ``run_dir``), and
    heatmaps (``explain``) in parts."""
    rank, world = rank_and_world(rank, world_size)
    if explain and (parts or world > 1):
        raise ProductCNNError("explain=true writes a heatmap per photo: classify without parts= (and one "
                              "process), or explain a sample of the photos")
    if world > 1 and str(Path(output).parent) == str(Path(run_dir)):
        raise ProductCNNError(f"{world} processes each have their own run folder: give them one output, "
                              "e.g. output=/shared/predictions.csv")
    return PartsPlan(rank, world, parts or (10_000 if world > 1 else None))


def parts_dir(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(f"{output.stem}.parts")


def part_path(directory: Path, index: int) -> Path:
    return directory / f"part-{index:05d}.csv"


def _plan(inputs: Sequence[Any], part_size: int, topk: int) -> dict[str, Any]:
    digest = hashlib.sha256("\n".join(map(str, inputs)).encode()).hexdigest()[:24]
    return {"inputs": len(inputs), "part_size": part_size, "parts": -(-len(inputs) // part_size),
            "topk": topk, "inputs_sha256": digest}


def predict_in_parts(predictor: Any, inputs: Sequence[Any], output: str | Path, *, topk: int, part_size: int,
                     rank: int = 0, world_size: int = 1, sort_dir: str | Path | None = None
                     ) -> tuple[Path | None, int]:
    """Classify this rank's parts of ``inputs`` (skipping finished ones); merge when every part is
    done. Returns (the merged file, or None while other ranks are still working; the number of
    photos this call could not read)."""
    if part_size < 1:
        raise ProductCNNError(f"parts={part_size}: give the number of photos per part (e.g. 10000)")
    output = Path(output)
    if output.suffix.lower() != ".csv":
        raise ProductCNNError(f"output={output}: prediction in parts writes CSV (and Parquet beside it)")
    directory = parts_dir(output)
    plan = _plan(inputs, part_size, topk)
    plan_file = directory / PLAN
    if plan_file.is_file():
        found = json.loads(plan_file.read_text())
        if found != plan:
            raise ProductCNNError(f"{directory} holds parts of other inputs or options ({found['inputs']} "
                                  f"inputs, parts of {found['part_size']}): remove it or choose another "
                                  "output")
    else:
        write_text(plan_file, json.dumps(plan, indent=1))  # every rank writes the same plan
    log.info("In parts of %d photos: rank %d of %d", part_size, rank, world_size)
    mine = [i for i in range(plan["parts"]) if i % world_size == rank]
    done = [i for i in mine if part_path(directory, i).is_file()]
    if done:
        log.info("Rank %d: %d of its %d part(s) already done in %s, kept", rank, len(done), len(mine),
                 directory)
    unreadable = 0
    for i in mine:
        path = part_path(directory, i)
        if path.is_file():
            continue
        chunk = list(inputs[i * part_size:(i + 1) * part_size])
        predictions = predictor.predict(chunk, topk=topk)
        write_predictions(predictions, path, topk)  # atomic: a part file is whole or absent
        if sort_dir:
            sort_into(predictions, sort_dir)
        failed = sum(not p.ok for p in predictions)
        unreadable += failed
        log.info("Rank %d: part %d of %d (%d photos, %d unreadable) -> %s", rank, i + 1, plan["parts"],
                 len(chunk), failed, path)
    missing = [i for i in range(plan["parts"]) if not part_path(directory, i).is_file()]
    if missing:
        log.info("Rank %d done; %d part(s) of other ranks still to come: the last rank to finish writes %s",
                 rank, len(missing), output)
        return None, unreadable
    return merge_parts(directory, plan["parts"], output), unreadable


def merge_parts(directory: Path, parts: int, output: Path) -> Path:
    """Concatenate the part CSVs in order into ``output`` (atomically), and into Parquet beside it
    when pyarrow is installed."""
    header: list[str] = []
    rows: list[dict[str, str]] = []
    for i in range(parts):
        with open(part_path(directory, i), newline="") as f:
            reader = csv.DictReader(f)
            header += [c for c in reader.fieldnames or [] if c not in header]
            rows += list(reader)
    if "error" in header:  # the last column, as in a one-process run
        header = [c for c in header if c != "error"] + ["error"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, header, restval="")
    writer.writeheader()
    writer.writerows(rows)
    write_text(output, buffer.getvalue())
    written = [str(output)]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        pass
    else:
        def column(name: str) -> list:
            values = [r.get(name, "") for r in rows]
            if name == "confidence" or name == "similarity" or name.endswith("_prob"):
                return [float(v) if v else None for v in values]
            return values

        table = pa.table({c: column(c) for c in header})
        with atomic_path(output.with_suffix(".parquet")) as tmp:
            pq.write_table(table, tmp)
        written.append(str(output.with_suffix(".parquet")))
    failed = sum(1 for r in rows if r.get("error"))
    log.info("Merged %d part(s): %d photo(s), %d could not be read -> %s", parts, len(rows), failed,
             ", ".join(written))
    return output
