"""Photos as small pictures on a page: a thumbnail as a data URI and the photo cards' style, shared
by the label-issue sheet (evaluation) and the review page (inference)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from product_cnn.data.images import open_image, to_rgb
from product_cnn.errors import ImageLoadError

CARD_CSS = """body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; }
.card { width: 190px; border: 1px solid #ccc; border-radius: 6px; padding: 8px; font-size: 12px; }
.card img { display: block; margin: 0 auto 6px; max-width: 174px; max-height: 174px; }
.path { color: #666; word-break: break-all; }"""  # the contact sheets' style (also review.html)


def thumbnail_jpeg(path: str | Path, side: int = 160) -> bytes | None:
    """The photo as a small JPEG, upright and RGB as training reads it; None if unreadable."""
    try:
        with open_image(path) as image:  # to_rgb may hand back the opened image: use it inside
            small = to_rgb(image)
            small.thumbnail((side, side))
            buffer = io.BytesIO()
            small.save(buffer, format="JPEG", quality=80)
    except ImageLoadError:
        return None
    return buffer.getvalue()


def thumbnail_uri(path: str | Path, side: int = 160) -> str | None:
    """A JPEG data URI of the photo (:func:`thumbnail_jpeg`); None if unreadable."""
    jpeg = thumbnail_jpeg(path, side)
    return None if jpeg is None else "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
