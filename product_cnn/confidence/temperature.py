"""Temperature scaling: one number that divides the logits, fitted by NLL on held-out predictions.

Dividing every logit by the same positive temperature keeps each photo's ranking of the classes
(the argmax never changes) and only makes the probabilities sharper (T < 1) or softer (T > 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

BOUNDS = (0.2, 10.0)  # the temperatures considered (beyond them the fit is degenerate, not informative)
ECE_BINS = 15


def calibrated_probs(views: torch.Tensor | Sequence[torch.Tensor], temperature: float) -> torch.Tensor:
    """Softmax of ``logits / temperature``; several views (test-time augmentation) are averaged
    after the softmax, as predict.py averages them."""
    views = [views] if isinstance(views, torch.Tensor) else list(views)
    return torch.stack([F.softmax(v.double() / temperature, dim=1) for v in views]).mean(0).float()


def fit_temperature(views: torch.Tensor | Sequence[torch.Tensor], labels: torch.Tensor,
                    then: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
    """The temperature that minimises the negative log-likelihood of ``labels`` (bounded search
    over log T; the NLL of softmax(z / T) has one minimum in 1/T), of the probabilities as ``then``
    turns them (the nearest photos' vote mixed in) when given. When every held-out prediction
    is right the NLL falls without end as T -> 0: no evidence for a temperature, so 1."""
    from scipy.optimize import minimize_scalar

    labels = torch.as_tensor(labels).long()
    if len(labels) == 0:
        raise ValueError("no held-out predictions to fit a temperature on")
    if bool((calibrated_probs(views, 1.0).argmax(1) == labels).all()):
        return 1.0

    def nll(log_t: float) -> float:
        probs = calibrated_probs(views, float(torch.tensor(log_t).exp()))
        probs = (then(probs) if then is not None else probs).double()
        return float(F.nll_loss(probs.clamp_min(1e-12).log(), labels))

    lo, hi = (float(torch.tensor(b).log()) for b in BOUNDS)
    result = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-5})
    return float(torch.tensor(result.x).exp())


def calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top class (torchmetrics, ``n_bins`` equal-width bins)."""
    from torchmetrics.functional.classification import multiclass_calibration_error  # seconds to import

    probs, labels = torch.as_tensor(probs).float(), torch.as_tensor(labels).long()
    if len(labels) == 0:
        return float("nan")
    return float(multiclass_calibration_error(probs, labels, num_classes=probs.shape[1], n_bins=n_bins,
                                              norm="l1", validate_args=False))


def reliability(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS
                ) -> list[tuple[float, float, int]]:
    """Per confidence bin with photos: (mean confidence, accuracy, count), for the diagram."""
    probs, labels = torch.as_tensor(probs).float(), torch.as_tensor(labels).long()
    confidence, predicted = probs.max(1)
    correct = (predicted == labels).float()
    bins = torch.clamp((confidence * n_bins).long(), max=n_bins - 1)
    rows = []
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            rows.append((float(confidence[mask].mean()), float(correct[mask].mean()), int(mask.sum())))
    return rows
