"""The allocator's bound (runtime.MemoryBound, the HeapBound callback) and the epoch line's memory note."""

from __future__ import annotations

import subprocess
import sys
from unittest.mock import patch

import pytest

from product_cnn import runtime
from product_cnn.runtime import MemoryBound
from product_cnn.training.epoch_log import EpochLog
from product_cnn.training.heap_bound import HeapBound
from product_cnn.training.run_record import RunRecord

MiB = 2**20


def _bound(readings: list[int], **kw) -> tuple[MemoryBound, list[int]]:
    trims: list[int] = []
    values = iter(readings)
    bound = MemoryBound(rss=lambda: next(values), trim=lambda: trims.append(bound.steps), active=True, **kw)
    return bound, trims


def test_the_limit_is_the_first_steps_peak_and_the_heap_is_trimmed_only_above_it():
    warmup = [900 * MiB, 1000 * MiB, 950 * MiB]
    later = [1020 * MiB, 1040 * MiB, 1000 * MiB, 1000 * MiB, 1000 * MiB, 1000 * MiB, 1000 * MiB, 1031 * MiB]
    bound, trims = _bound(warmup + later, warmup=3, slack=0.03)
    for _ in warmup:
        assert bound.limit is None and bound.step() is False  # measuring
    assert bound.peak == 1000 * MiB and bound.limit == pytest.approx(1030 * MiB)
    done = [bound.step() for _ in later]
    assert done == [False, True, False, False, False, False, False, True]
    assert trims == [5, 11] and bound.trims == 2
    assert bound.peak == 1000 * MiB


def test_over_the_limit_again_right_after_a_trim_raises_the_peak_instead_of_trimming_every_step():
    bound, trims = _bound([1000 * MiB] * 2 + [1200 * MiB] * 6, warmup=2, slack=0.03)
    done = [bound.step() for _ in range(8)]
    assert done == [False, False, True, False, False, False, False, False]
    assert trims == [3] and bound.peak == 1200 * MiB  # the steps need it now


def test_tune_malloc_off_turns_the_bound_off_too(monkeypatch):
    monkeypatch.setenv("PRODUCT_CNN_TUNE_MALLOC", "0")
    monkeypatch.setattr(runtime, "_applied", False)
    monkeypatch.setattr(runtime, "_libc", None)
    assert runtime.tune_malloc() is False and runtime.malloc_tuned() is False
    trims: list[int] = []
    bound = MemoryBound(warmup=1, rss=lambda: 10**12, trim=lambda: trims.append(1))
    assert bound.active is False
    assert not any(bound.step() for _ in range(5)) and trims == []
    callback = HeapBound(warmup=1)
    callback.on_train_start(None, None)
    assert callback.bound is not None and callback.bound.active is False


TRIM = """
import sys
from product_cnn import runtime
assert runtime.tune_malloc()
blocks = [bytearray(2**20) for _ in range(400)]  # 400 MiB from the heap (mmap is off)
del blocks[::2]  # 200 MiB free in the middle of the heap: kept, resident
before = runtime.resident_bytes()
runtime.trim_heap()
after = runtime.resident_bytes()
print(before // 2**20, after // 2**20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc (Linux) only")
def test_trim_hands_the_tuned_heaps_free_pages_back():
    out = subprocess.run([sys.executable, "-c", TRIM], capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    before, after = map(int, out.stdout.split())
    assert before - after > 150, (before, after)  # most of the 200 MiB freed went back to the OS


def test_the_epoch_line_notes_memory_only_when_it_grew_by_more_than_5_percent_after_the_warm_up():
    from types import SimpleNamespace

    log = EpochLog()
    trainer = SimpleNamespace(global_step=0, current_epoch=0)
    notes = []
    for epoch, (steps, gib) in enumerate([(11, 0.80), (22, 1.00), (33, 1.04), (44, 1.06), (55, 1.10),
                                          (66, 1.11), (77, 1.20)], 1):
        trainer.global_step, trainer.current_epoch = steps, epoch
        log._epoch_start = 0.0
        with patch("product_cnn.training.epoch_log.resident_bytes", return_value=int(gib * 2**30)):
            log._finish_epoch(trainer, SimpleNamespace(record=RunRecord(["a", "b"])))
        notes.append(log.memory_note())
    assert [e for e, _ in log._memory] == [2, 3, 4, 5, 6, 7]  # epoch 1 ended inside the warm-up
    assert notes[:3] == ["", "", ""]
    assert notes[3] == "memory 1.06 GiB, +6.0% since epoch 2"
    assert notes[4:6] == ["", ""]  # not another 5% above the last note
    assert notes[6] == "memory 1.20 GiB, +20.0% since epoch 2"
