"""The accuracy-coverage table and the threshold for a target accuracy, on hand-made examples."""

import math

import pytest
import torch

from product_cnn.confidence.coverage import coverage_table, operating_line, threshold_for_accuracy

CONF = torch.tensor([0.95, 0.9, 0.8, 0.8, 0.7, 0.6])
RIGHT = torch.tensor([True, True, True, False, True, False])


def test_the_coverage_table():
    rows = coverage_table(CONF, RIGHT, thresholds=(0.5, 0.75, 0.85, 0.99))
    assert [(r["count"], r["coverage"]) for r in rows] == [(6, 1.0), (4, 4 / 6), (2, 2 / 6), (0, 0.0)]
    assert [r["accuracy"] for r in rows[:3]] == [pytest.approx(4 / 6), 0.75, 1.0]
    assert math.isnan(rows[3]["accuracy"])


def test_the_threshold_is_the_lowest_that_reaches_the_target():
    assert threshold_for_accuracy(CONF, RIGHT, 1.0) == (pytest.approx(0.9), pytest.approx(2 / 6))
    # 0.8 is one threshold for both photos at 0.8 (ties are filed together): 3 of 4 right
    assert threshold_for_accuracy(CONF, RIGHT, 0.75) == (pytest.approx(0.7), pytest.approx(5 / 6))
    assert threshold_for_accuracy(CONF, RIGHT, 0.8) == (pytest.approx(0.7), pytest.approx(5 / 6))
    assert threshold_for_accuracy(CONF, RIGHT, 0.5) == (pytest.approx(0.6), 1.0)
    assert threshold_for_accuracy(CONF, ~RIGHT, 0.9) is None  # the most confident photo is wrong


def test_the_line_a_shop_reads():
    line = operating_line(0.98, (0.931, 0.81))
    assert line == "at >= 0.98 accuracy, 81% of photos are filed automatically (confidence >= 0.931)"
    assert "no confidence threshold reaches it" in operating_line(0.98, None)
