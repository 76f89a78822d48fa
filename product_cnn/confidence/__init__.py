"""How far to trust a prediction: temperature scaling, the accuracy-coverage operating point and
the "none of these" score, fitted on held-out photos and stored with the checkpoint (plain torch)."""
