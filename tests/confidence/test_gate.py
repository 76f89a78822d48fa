"""The gate: unsure under the confidence threshold, unknown under the similarity threshold."""

import pytest
import torch

from product_cnn.confidence.card import ConfidenceCard
from product_cnn.confidence.gate import UNKNOWN, UNSURE, Gate, build_gate
from product_cnn.confidence.novelty import feature_bank, similarity, unknown_threshold
from product_cnn.errors import ProductCNNError


def _card(unknown: float | None = 0.5) -> ConfidenceCard:
    return ConfidenceCard(1.3, "validation split (6 photos)", torch.tensor([0.95, 0.9, 0.8, 0.8, 0.7, 0.6]),
                          torch.tensor([True, True, True, False, True, False]), unknown_threshold=unknown)


def test_verdicts():
    gate = Gate(min_confidence=0.8, unknown_threshold=0.5)
    assert gate.verdict(0.9, 0.7) is None
    assert gate.verdict(0.79, 0.7) == UNSURE
    assert gate.verdict(0.8, 0.7) is None  # at the threshold: filed
    assert gate.verdict(0.99, 0.49) == UNKNOWN  # unknown wins over any confidence
    assert Gate().verdict(0.01, None) is None and not Gate().active


def test_target_accuracy_reads_the_held_out_photos():
    gate = build_gate([_card()], target_accuracy=1.0)
    assert gate.min_confidence == pytest.approx(0.9) and gate.unknown_threshold == 0.5
    assert build_gate([_card()], target_accuracy=1.0, unknown=False).unknown_threshold is None
    ensemble = build_gate([_card(0.4), _card(0.6)], target_accuracy=0.75)
    assert ensemble.unknown_threshold == pytest.approx(0.5) and ensemble.min_confidence == pytest.approx(0.7)


@pytest.mark.parametrize(("cards", "kwargs", "message"), [
    ([_card()], {"min_confidence": 0.8, "target_accuracy": 0.9}, "exclude each other"),
    ([_card()], {"min_confidence": 1.5}, "between 0 and 1"),
    ([None], {"target_accuracy": 0.9}, "needs a calibrated checkpoint"),
    ([ConfidenceCard(1.0, "x", torch.tensor([0.9]), torch.tensor([False]))], {"target_accuracy": 0.9},
     "reached at no confidence"),
])
def test_what_cannot_be_met_is_one_line(cards, kwargs, message):
    with pytest.raises(ProductCNNError, match=message) as err:
        build_gate(cards, **kwargs)
    assert "\n" not in str(err.value)


def test_similarity_is_the_mean_over_the_nearest_training_photos():
    bank = feature_bank(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    got = similarity(torch.tensor([[2.0, 0.0]]), bank, k=2)  # cosines 1, 0, 0.707: mean of the top 2
    assert float(got) == pytest.approx((1 + 2**-0.5) / 2, abs=1e-3)
    assert unknown_threshold(torch.arange(101.0), 0.02) == pytest.approx(2.0)
