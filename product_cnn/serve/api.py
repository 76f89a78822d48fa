"""The LitServe API: decode uploads, classify them in dynamic batches, answer in JSON.

A bad upload never fails the batch it would have joined: ``decode_request`` returns a
:class:`BadRequest` instead of raising, the batch classifies only the good photos, and
``encode_response`` answers that request alone with its 4xx and a one-line JSON reason.

LitServe reads the annotation of ``decode_request``'s argument to know that it should parse
the request (JSON or form): this module keeps its annotations evaluated (no ``from __future__
import annotations``).
"""

import hmac
import logging
from typing import Any

import litserve as ls
import numpy as np
import torch
from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse

from product_cnn.runtime import tune_malloc
from product_cnn.serve.backends import ModelInfo, load_backend
from product_cnn.serve.uploads import BadRequest, Photos, decode_photos, read_request, wants_explain

log = logging.getLogger(__name__)


def bearer_ok(header: str | None, api_key: str | None) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <api_key>`` (constant-time compare)."""
    if not api_key:
        return True
    scheme, _, token = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())


class ClassifierAPI(ls.LitAPI):
    """``POST /predict``: photos in, ``{"category", "confidence", "topk"}`` out (a list for several);
    a photo the gate holds back answers ``"category": null`` with ``"unsure": true`` or
    ``"unknown": true``, its top-k kept; ``"nearest"`` lists the most similar training photos when
    the model names them; ``explain=1`` (a form field or JSON key) adds ``"heatmap"``, a PNG data URI
    of where the network looked (Grad-CAM of its top category, in PyTorch)."""

    def __init__(self, info: ModelInfo, ckpt_path: str | None, onnx_path: str | None, *, topk: int = 3,
                 max_files: int = 16, max_bytes: int = 20 * 2**20, api_key: str | None = None,
                 max_batch_size: int = 8, batch_timeout: float = 0.005) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path="/predict")
        self.info, self.ckpt_path, self.onnx_path = info, ckpt_path, onnx_path
        self.topk = max(1, min(topk, len(info.class_names)))
        self.max_files, self.max_bytes, self.api_key = max_files, max_bytes, api_key

    def setup(self, device: str) -> None:
        tune_malloc()  # in the worker process, where the network runs (as predict.py does)
        self.backend = load_backend(self.info.backend, self.ckpt_path, self.onnx_path, device=device,
                                    unknown=self.info.gate.unknown_threshold is not None)

    def authorize(self, request: Request) -> None:
        if not bearer_ok(request.headers.get("authorization"), self.api_key):
            raise HTTPException(401, "missing or wrong API key: send Authorization: Bearer <key>")

    def decode_request(self, request: Request) -> Photos | BadRequest:
        files = read_request(request, self.max_files, self.max_bytes)
        if isinstance(files, BadRequest):
            return files
        explain = wants_explain(request)
        if isinstance(explain, BadRequest):
            return explain
        if explain and not self.info.explains:
            return BadRequest(400, "explain=1 needs the checkpoint (heatmaps need its gradients): this "
                                   "server runs an exported model alone; start it with ckpt_path=<the .ckpt>")
        photos = decode_photos(files, self.info.image_size, several=len(files) > 1, decode=self.info.decode)
        if isinstance(photos, Photos):
            photos.explain = explain
        return photos

    def batch(self, inputs: list[Photos | BadRequest]) -> list[Photos | BadRequest]:
        return inputs  # kept apart: predict() runs the good photos of all of them at once

    def unbatch(self, output: list[Any]) -> list[Any]:
        return output

    def predict(self, x: Photos | BadRequest | list[Photos | BadRequest]) -> Any:
        items = x if isinstance(x, list) else [x]
        good = [item for item in items if isinstance(item, Photos)]
        probs, sims, found = (self.backend.evidence(torch.cat([p.images for p in good])) if good
                              else (np.empty((0, 0)), None, None))
        answers, start = [], 0
        for item in items:
            if isinstance(item, Photos):
                end = start + len(item.images)
                heatmaps = self.backend.heatmaps.pngs(item.images, probs[start:end].argmax(1).tolist(),
                                                      item.data) if item.explain else None
                answers.append((item, probs[start:end], None if sims is None else sims[start:end],
                                None if found is None else found[start:end], heatmaps))
                start = end
            else:
                answers.append(item)
        return answers if isinstance(x, list) else answers[0]

    def encode_response(self, output: Any) -> JSONResponse:
        if isinstance(output, BadRequest):
            return JSONResponse({"error": output.reason}, status_code=output.status)
        photos, probs, sims, found, heatmaps = output
        names = self.info.class_names
        results = []
        for n, row in enumerate(probs):
            order = np.argsort(-row)[: self.topk]
            ranked = [[names[int(i)], float(row[i])] for i in order]
            sim = None if sims is None else float(sims[n])
            verdict = self.info.gate.verdict(ranked[0][1], sim)
            result: dict[str, Any] = {"category": None if verdict else ranked[0][0],
                                      "confidence": ranked[0][1], "topk": ranked}
            if verdict:
                result[verdict] = True
            if sim is not None:
                result["similarity"] = sim
            if found is not None:  # the nearest training photos: GET /photo/<row> shows one
                result["nearest"] = [{"category": category, "similarity": sim_, "photo": f"/photo/{row}"}
                                     for row, category, _, sim_ in found[n]]
            if heatmaps is not None:  # explain=1: where the network looked, over the photo sent
                result["heatmap"] = heatmaps[n]
            results.append(result)
        return JSONResponse(results if photos.several else results[0])
