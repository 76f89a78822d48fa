"""Temperature scaling: the fit recovers a known temperature, keeps the argmax, lowers the ECE."""

import pytest
import torch

from product_cnn.confidence.temperature import (
    calibrated_probs,
    calibration_error,
    fit_temperature,
    reliability,
)


def _sampled(temperature: float, n: int = 20000, classes: int = 5, seed: int = 0):
    """Logits, and labels drawn from softmax(logits / temperature): that temperature is the truth."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=g) * 4
    labels = torch.multinomial(torch.softmax(logits / temperature, 1), 1, generator=g).squeeze(1)
    return logits, labels


@pytest.mark.parametrize("truth", [0.5, 1.0, 2.5])
def test_the_fit_recovers_a_known_temperature(truth):
    logits, labels = _sampled(truth)
    assert fit_temperature(logits, labels) == pytest.approx(truth, rel=0.05)


def test_scaling_keeps_the_argmax_and_lowers_the_calibration_error():
    logits, labels = _sampled(2.5)
    t = fit_temperature(logits, labels)
    before, after = calibrated_probs(logits, 1.0), calibrated_probs(logits, t)
    assert torch.equal(before.argmax(1), after.argmax(1))
    assert torch.allclose(after.sum(1), torch.ones(len(after)), atol=1e-5)
    assert calibration_error(before, labels) > 0.1 > 0.02 > calibration_error(after, labels)


def test_no_temperature_without_a_single_wrong_held_out_prediction():
    logits = torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 0.5]])
    assert fit_temperature(logits, logits.argmax(1)) == 1.0  # the NLL would fall without end as T -> 0
    assert fit_temperature(logits, torch.tensor([0, 1, 1])) != 1.0


def test_several_views_are_averaged_after_the_softmax():
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    expected = (torch.softmax(a / 2, 1) + torch.softmax(b / 2, 1)) / 2
    torch.testing.assert_close(calibrated_probs([a, b], 2.0), expected)


def test_the_calibration_error_of_a_hand_made_example():
    # top-1 confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.6 (right); 10 bins:
    # bin 0.9: |0.5 - 0.9| * 2/4, bin 0.6: |1.0 - 0.6| * 2/4 -> 0.2 + 0.2
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    labels = torch.tensor([0, 1, 1, 1])
    assert calibration_error(probs, labels, n_bins=10) == pytest.approx(0.4, abs=1e-6)
    rows = reliability(probs, labels, n_bins=10)
    assert rows == [pytest.approx((0.6, 1.0, 2)), pytest.approx((0.9, 0.5, 2))]
