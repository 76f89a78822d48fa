"""What a ``POST /predict`` carries, read and checked: photos as bytes, or a one-line 4xx reason.

Multipart uploads in the form field ``file`` (one or several), or JSON ``{"image": <base64>}``.
Nothing here reads a path or fetches a URL named by a request: only the bytes sent are used.
Each photo then goes through the project's one image-reading path
(:func:`product_cnn.data.images.load_image`).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from product_cnn.data.images import ImageSize, load_image
from product_cnn.errors import ImageLoadError


@dataclass
class BadRequest:
    """Why a request cannot be answered: an HTTP status and a one-line reason."""

    status: int
    reason: str


@dataclass
class Photos:
    """The decoded photos of one request, in order, and whether the client sent a list."""

    images: torch.Tensor  # (k, 3, H, W) uint8
    names: list[str]
    several: bool
    explain: bool = False  # explain=1: a heatmap of each photo in the answer
    data: list[bytes] | None = None  # the bytes sent (the heatmaps are drawn on them)


def _file_fields(form: Any) -> list[Any]:
    return form.getlist("file") if hasattr(form, "getlist") else []


def read_request(payload: Any, max_files: int, max_bytes: int) -> list[tuple[str, bytes]] | BadRequest:
    """The uploaded photos as (name, bytes), or why not; ``payload`` is LitServe's parsed request."""
    if isinstance(payload, Mapping) and not hasattr(payload, "getlist"):  # JSON
        image = payload.get("image")
        if not isinstance(image, str):
            return BadRequest(400, 'JSON requests carry {"image": "<base64 of the photo>"}')
        try:
            data = base64.b64decode(image, validate=True)
        except (binascii.Error, ValueError):
            return BadRequest(400, "the image field is not valid base64")
        files = [("image", data)]
    else:
        uploads = _file_fields(payload)
        if not uploads:
            return BadRequest(400, "no photo: send multipart form field 'file' or JSON {\"image\": <base64>}")
        if len(uploads) > max_files:
            return BadRequest(413, f"{len(uploads)} files in one request; at most {max_files}")
        files = []
        for upload in uploads:
            if isinstance(upload, str):
                return BadRequest(400, "the form field 'file' must be a file upload, not text")
            upload.file.seek(0)
            files.append((upload.filename or "upload", upload.file.read(max_bytes + 1)))
    for name, data in files:
        if len(data) > max_bytes:
            return BadRequest(413, f"{name}: larger than the {max_bytes // 2**20} MB limit")
    return files


EXPLAIN_VALUES = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False, "": False}


def wants_explain(payload: Any) -> bool | BadRequest:
    """Whether the request asks for heatmaps: the form field or JSON key ``explain`` (1/true/yes)."""
    value = payload.get("explain") if hasattr(payload, "get") else None
    if value is None:
        return False
    text = str(value).strip().lower()
    if text not in EXPLAIN_VALUES:
        return BadRequest(400, f"explain={value!r}: 1 (a heatmap of each photo) or 0")
    return EXPLAIN_VALUES[text]


def decode_photos(files: list[tuple[str, bytes]], image_size: ImageSize,
                  several: bool, decode: str = "reduced") -> Photos | BadRequest:
    """Decode every photo the way training did, or name the first that cannot be read."""
    images = []
    for index, (name, data) in enumerate(files, start=1):
        try:
            images.append(load_image(data, image_size, name=name, decode=decode))
        except ImageLoadError as err:
            where = f"file {index} ({name})" if several else name
            status = 413 if "decompression-bomb" in (err.reason or "") else 415 if "not an image" in (
                err.reason or "") else 400
            return BadRequest(status, f"{where}: {err.reason}")
    return Photos(torch.stack(images), [name for name, _ in files], several, data=[d for _, d in files])
