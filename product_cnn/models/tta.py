"""Test-time augmentation: which views of a photo a network's probabilities are averaged over."""

from __future__ import annotations

from product_cnn.errors import ProductCNNError

TTA = ("none", "flip")  # test-time augmentation: none, or the mean with the mirror image


def check_tta(tta: str) -> str:
    """``tta`` if it is one of :data:`TTA`, else a one-line error."""
    if tta not in TTA:
        raise ProductCNNError(f"tta={tta!r} is not one of {', '.join(TTA)}")
    return tta
