"""Reading one image the way the original did: decode, orient, RGB, resize, uint8 CHW tensor.

Every path that turns a file into model input (training, cache, evaluation, prediction,
serving) goes through :func:`load_image`, and every batch goes through :func:`to_unit_float`
before the network. ``decode="reduced"`` (the default) lets libjpeg decode a JPEG at 1/2, 1/4
or 1/8 scale (Pillow's ``Image.draft``: the smallest scale still at least the target size)
before the exact bilinear resize; ``"full"`` decodes every pixel first, as the original did.
The two differ by about one level of 255 on average (docs/performance.md has the numbers).
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import ExifTags, Image, ImageOps

from product_cnn.errors import ImageLoadError

if TYPE_CHECKING:  # torch is imported where a tensor is made: exported models predict without it
    import torch

# Bump when load_image's output changes for the same file: it invalidates decoded-image caches.
PREPROCESS_VERSION = 1
DECODE_METHODS = ("reduced", "full")
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

ImageSize = int | tuple[int, int] | list[int]  # one side, or (height, width)


def image_hw(size: ImageSize) -> tuple[int, int]:
    """``(height, width)`` of an image size given as one side or as (height, width)."""
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def is_image_file(path: str | Path) -> bool:
    """True for a visible file with one of :data:`IMG_EXTENSIONS` (any case)."""
    name = Path(path).name
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def to_rgb(image: Image.Image) -> Image.Image:
    """Apply EXIF orientation and convert any mode (L, P, RGBA, CMYK, I;16, ...) to RGB.

    Transparent pixels are composited onto white, the usual catalogue background. An upright
    RGB image comes back as it is (not a copy: 0.3 ms a photo of the decoding budget).
    """
    if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:  # exif_transpose copies even when upright
        image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grayscale: scale to 8 bit
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array * (255.0 / peak), 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image if image.mode == "RGB" else image.convert("RGB")


def pil_to_array(image: Image.Image, size: ImageSize) -> np.ndarray:
    """RGB-convert and resize a PIL image to a ``(3, H, W)`` uint8 array."""
    height, width = image_hw(size)
    image = to_rgb(image).resize((width, height), Image.Resampling.BILINEAR)
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))


def pil_to_tensor(image: Image.Image, size: ImageSize) -> torch.Tensor:
    """RGB-convert and resize a PIL image to a ``(3, H, W)`` uint8 tensor."""
    import torch

    return torch.from_numpy(pil_to_array(image, size))


def check_decode(decode: str) -> str:
    """``decode`` if it is one of :data:`DECODE_METHODS`, else a one-line error."""
    if decode not in DECODE_METHODS:
        raise ValueError(f"unknown decode method {decode!r}: choose one of {', '.join(DECODE_METHODS)}")
    return decode


@contextmanager
def open_image(source: str | Path | bytes, name: str | None = None,
               at_least: ImageSize | None = None) -> Iterator[Image.Image]:
    """Open and decode a file or the bytes of one (pixel-count guard on), or raise
    :class:`ImageLoadError` naming ``name`` (default: the path, or ``<upload>`` for bytes).

    ``at_least``: a JPEG may be decoded at reduced scale, never below this size on either side
    (whatever its EXIF orientation); other formats decode in full."""
    path = name or ("<upload>" if isinstance(source, bytes) else str(source))
    try:
        size = len(source) if isinstance(source, bytes) else os.path.getsize(source)
        if size == 0:
            raise ImageLoadError(str(path), "empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
                # explicit, not only through Pillow's warning: warning filters are process-wide
                # and not thread-safe, and the data check decodes in threads
                width, height = image.size
                if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
                    raise ImageLoadError(str(path), f"too many pixels, a decompression-bomb guard "
                                                    f"({width}x{height} > {Image.MAX_IMAGE_PIXELS})")
                if at_least is not None and image.format in ("JPEG", "MPO"):  # MPO: camera JPEGs
                    side = max(image_hw(at_least))  # both sides: an EXIF rotation swaps them
                    image.draft(image.mode, (side, side))
                image.load()
                yield image
    except FileNotFoundError:
        raise ImageLoadError(str(path), "file not found") from None
    except Image.UnidentifiedImageError:
        raise ImageLoadError(str(path), "not an image file PIL can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageLoadError(str(path), f"too many pixels, a decompression-bomb guard ({err})") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageLoadError(str(path), f"corrupt or truncated ({err})") from None


def load_array(source: str | Path | bytes, size: ImageSize = 256, name: str | None = None,
               decode: str = "reduced") -> np.ndarray:
    """Decode a file (or its bytes) into a ``(3, H, W)`` uint8 array, or raise :class:`ImageLoadError`.

    ``decode``: ``"reduced"`` (JPEGs decoded at reduced scale, then resized) or ``"full"``."""
    with open_image(source, name, size if check_decode(decode) == "reduced" else None) as image:
        return pil_to_array(image, size)


def load_image(source: str | Path | bytes, size: ImageSize = 256, name: str | None = None,
               decode: str = "reduced") -> torch.Tensor:
    """:func:`load_array` as a ``(3, H, W)`` uint8 tensor."""
    import torch

    return torch.from_numpy(load_array(source, size, name, decode))


def to_unit_float(batch: torch.Tensor) -> torch.Tensor:
    """Scale a uint8 image batch to float32 in [0, 1]; float input passes through."""
    import torch

    if batch.dtype == torch.uint8:
        return batch.to(torch.float32).div_(255.0)
    return batch
