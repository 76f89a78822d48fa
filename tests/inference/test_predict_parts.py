"""Prediction in parts over several processes: disjoint parts, a merged file equal to one process's,
a restart that keeps finished parts; and predicting straight from shards."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from product_cnn.data.datamodule import ProductDataModule
from product_cnn.data.streaming.prepare import prepare_shards
from product_cnn.errors import ProductCNNError
from product_cnn.inference.parts import parts_dir, predict_in_parts, rank_and_world
from product_cnn.inference.predictor import Predictor
from tests.helpers import REPO


def _predict(tmp_path: Path, run: str, *overrides: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(REPO / "predict.py"), *overrides, "device=cpu", "precision=32",
         f"hydra.run.dir={tmp_path / run}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})},
    )


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


@pytest.mark.slow  # about 20 s: three predict.py processes
def test_two_processes_classify_disjoint_parts_and_merge_to_the_one_process_result(tiny_run, tmp_path):
    root, best = tiny_run["root"], tiny_run["best"]
    # batches of 7 on both sides: the same batches give the same bits (other batch shapes differ in
    # the last digit of a probability)
    one = _predict(tmp_path, "one", f"ckpt_path={best}", f"inputs={root}", f"output={tmp_path}/one.csv",
                   "batch_size=7")
    assert one.wait(timeout=300) == 0, one.stderr.read()[-2000:]
    out = tmp_path / "many" / "predictions.csv"
    ranks = [_predict(tmp_path, f"rank{r}", f"ckpt_path={best}", f"inputs={root}", f"output={out}",
                      "parts=7", "batch_size=7", env={"RANK": str(r), "WORLD_SIZE": "2"}) for r in range(2)]
    for proc in ranks:  # both at once, as torchrun or srun would start them
        assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    parts = sorted(parts_dir(out).glob("part-*.csv"))
    assert len(parts) == 9  # 60 photos in parts of 7
    log = (tmp_path / "rank0" / "predict.log").read_text()  # rank 1 logs warnings only
    written = {int(line.split("part ")[1].split(" of")[0]) for line in log.splitlines() if " -> " in line
               and "Rank 0: part" in line}
    assert written == {1, 3, 5, 7, 9}  # rank 0's share; rank 1 wrote the others
    paths = [r["path"] for part in parts for r in _rows(part)]
    assert len(paths) == len(set(paths)) == 60  # disjoint parts, every photo once
    assert _rows(out) == _rows(tmp_path / "one.csv")
    pyarrow = pytest.importorskip("pyarrow.parquet")
    table = pyarrow.read_table(out.with_suffix(".parquet")).to_pylist()
    assert [r["path"] for r in table] == [r["path"] for r in _rows(out)]
    assert table[0]["confidence"] == pytest.approx(float(_rows(out)[0]["confidence"]))


class _Counting:
    """A predictor that counts the photos it was asked to classify (and can fail on the n-th part)."""

    def __init__(self, predictor: Predictor, fail_on: int | None = None) -> None:
        self.predictor, self.fail_on, self.seen, self.calls = predictor, fail_on, 0, 0

    def predict(self, images, topk=3):
        self.calls += 1
        if self.calls == self.fail_on:
            raise KeyboardInterrupt
        self.seen += len(images)
        return self.predictor.predict(images, topk=topk)


def test_a_restart_keeps_finished_parts_and_other_inputs_are_refused(tiny_run, tmp_path):
    predictor = Predictor.from_checkpoint(tiny_run["best"], device="cpu")
    files = sorted(str(p) for p in Path(tiny_run["root"]).rglob("*.jpg"))
    out = tmp_path / "p.csv"
    interrupted = _Counting(predictor, fail_on=3)
    with pytest.raises(KeyboardInterrupt):
        predict_in_parts(interrupted, files, out, topk=3, part_size=25)
    assert interrupted.seen == 50 and not out.exists()
    again = _Counting(predictor)
    assert predict_in_parts(again, files, out, topk=3, part_size=25) == (out, 0)
    assert again.seen == 10  # only the part that was not finished
    assert len(_rows(out)) == 60 and [r["path"] for r in _rows(out)] == files
    with pytest.raises(ProductCNNError, match="parts of other inputs"):
        predict_in_parts(again, files[:30], out, topk=3, part_size=25)
    with pytest.raises(ProductCNNError, match="rank must be in"):
        rank_and_world(2, 2)


def test_predict_reads_shards_and_names_each_photo(tiny_run, tmp_path):
    folder = ProductDataModule(root=str(tiny_run["root"]), image_size=64, cache=False,
                               cache_dir=str(tmp_path / "cache"))
    prepare_shards(folder.photos, str(tmp_path / "shards"), image_size=64, decode="reduced", store="bytes",
                   num_workers=2)
    proc = _predict(tmp_path, "shards", f"ckpt_path={tiny_run['best']}", f"inputs={tmp_path / 'shards'}",
                    f"output={tmp_path}/s.csv")
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    one = _predict(tmp_path, "files", f"ckpt_path={tiny_run['best']}", f"inputs={tiny_run['root']}",
                   f"output={tmp_path}/f.csv")
    assert one.wait(timeout=300) == 0
    by_path = {r["path"]: r for r in _rows(tmp_path / "f.csv")}
    shard_rows = _rows(tmp_path / "s.csv")
    assert sorted(r["path"] for r in shard_rows) == sorted(by_path)  # every photo once, by its path
    for row in shard_rows:  # the same photo gives the same answer from a shard as from its file
        assert row["category"] == by_path[row["path"]]["category"]
        assert float(row["confidence"]) == pytest.approx(float(by_path[row["path"]]["confidence"]), abs=1e-5)
