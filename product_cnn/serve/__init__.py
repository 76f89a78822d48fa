"""Serving a checkpoint over HTTP with LitServe: ``python serve.py ckpt_path=...`` (see app.py)."""
