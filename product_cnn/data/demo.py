"""The embedded demo data set: synthetic product pictures, one visual family per category.

Deterministic (same seed, same bytes), written once as an ordinary ImageFolder tree of JPEGs so
it goes through exactly the same code path as real photos, and reused afterwards.

* Accessories: rings, watches, necklaces
* Artifacts:   vases, statuettes
* Fashion:     t-shirts, dresses, shoes
* Home:        lamps, chairs, mugs
* Stationary:  pens, notebooks, rulers

Each picture varies the object's colour, size, position and rotation, the background (plain,
gradient, cluttered) and adds sensor noise and JPEG compression.
"""

from __future__ import annotations

import colorsys
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from product_cnn.errors import DataError

log = logging.getLogger(__name__)

DEMO_VERSION = 4
CLASS_NAMES = ("Accessories", "Artifacts", "Fashion", "Home", "Stationary")
_LAYER = 240  # objects are drawn on a square transparent layer of this side, centred
_MARKER = "demo.json"

Color = tuple[int, int, int]
Drawer = Callable[[ImageDraw.ImageDraw, np.random.Generator, Color], None]


def _color(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> Color:
    return tuple(int(v) for v in rng.integers(lo, hi, size=3))  # type: ignore[return-value]


def _shade(color: Color, factor: float) -> Color:
    return tuple(int(max(0, min(255, c * factor))) for c in color)  # type: ignore[return-value]


# --- Accessories -------------------------------------------------------------------------
def _ring(d: ImageDraw.ImageDraw, rng: np.random.Generator, c: Color) -> None:
    metal = [(212, 175, 55), (192, 192, 200), (183, 110, 121)][int(rng.integers(3))]
    r = rng.uniform(45, 70)
    w = int(rng.uniform(8, 16))
    d.ellipse([120 - r, 130 - r * 0.8, 120 + r, 130 + r * 0.8], outline=metal, width=w)
    g = rng.uniform(14, 24)
    top = 130 - r * 0.8
    d.polygon([(120, top - 2 * g), (120 + g, top - g), (120, top + 4), (120 - g, top - g)], fill=c)


def _watch(d: ImageDraw.ImageDraw, rng: np.random.Generator, c: Color) -> None:
    strap = _shade(c, 0.6)
    sw = rng.uniform(28, 40)
    d.rectangle([120 - sw, 10, 120 + sw, 230], fill=strap)
    r = rng.uniform(48, 62)
    face = _color(rng, 180, 256)
    if rng.random() < 0.5:
        d.ellipse([120 - r, 120 - r, 120 + r, 120 + r], fill=face, outline=c, width=8)
    else:
        d.rounded_rectangle([120 - r, 120 - r, 120 + r, 120 + r], 14, fill=face, outline=c, width=8)
    for k in range(12):
        a = k * math.pi / 6
        d.line([120 + 0.75 * r * math.cos(a), 120 + 0.75 * r * math.sin(a),
                120 + 0.9 * r * math.cos(a), 120 + 0.9 * r * math.sin(a)], fill=(20, 20, 20), width=3)
    for length, angle in ((0.5, rng.uniform(0, 6.3)), (0.75, rng.uniform(0, 6.3))):
        d.line([120, 120, 120 + length * r * math.cos(angle), 120 + length * r * math.sin(angle)],
               fill=(10, 10, 10), width=4)


def _necklace(d: ImageDraw.ImageDraw, rng: np.random.Generator, c: Color) -> None:
    bead = int(rng.uniform(5, 9))
    width, depth = rng.uniform(70, 100), rng.uniform(80, 120)
    for k in range(26):
        t = math.pi * k / 25
        x, y = 120 - width * math.cos(t), 40 + depth * math.sin(t)
        d.ellipse([x - bead, y - bead, x + bead, y + bead], fill=c)
    p = rng.uniform(14, 22)
    d.polygon([(120, 40 + depth), (120 + p, 40 + depth + p * 1.4), (120, 40 + depth + 2.6 * p),
               (120 - p, 40 + depth + p * 1.4)], fill=_color(rng))


# --- Artifacts ---------------------------------------------------------------------------
def _vase(d: ImageDraw.ImageDraw, rng: np.random.Generator, c: Color) -> None:
    neck, belly, foot = rng.uniform(14, 28), rng.uniform(50, 80), rng.uniform(25, 40)
    top, bottom = 20, 225
    left, right = [], []
    for k in range(31):
        t = k / 30
        y = top + t * (bottom - top)
        r = neck + (belly - neck) * math.sin(math.pi * min(1.0, t * 1.2)) ** 1.5
        r = r if t < 0.85 else foot + (r - foot) * (1 - t) / 0.15
        left.append((120 - r, y))
        right.append((120 + r, y))
    d.polygon(left + right[::-1], fill=c, outline=_shade(c, 0.5))
    band = _color(rng)
    y0 = rng.uniform(90, 140)
    d.rectangle([120 - belly * 0.7, y0, 120 + belly * 0.7, y0 + 10], fill=band)
    d.ellipse([120 - neck - 6, top - 6, 120 + neck + 6, top + 8], outline=_shade(c, 0.5), width=4)


def _statuette(d: ImageDraw.ImageDraw, rng: np.random.Generator, c: Color) -> None:
    bw = rng.uniform(50, 70)
    d.rectangle([120 - bw, 200, 120 + bw, 230], fill=_shade(c, 0.6))
    body = rng.uniform(28, 40)
    d.polygon([(120 - body * 1.3, 200), (120 + body * 1.3, 200), (120 + body * 0.7, 85),
               (120 - body * 0.7, 85)], fill=c)
    head = rng.uniform(20, 28)
    d.ellipse([120 - head, 85 - 2 * head, 120 + head, 85], fill=c)
    arm = rng.uniform(30, 60)
    d.line([120 - body * 0.8, 100, 120 - body - arm * 0.6, 100 + arm], fill=c, width=10)
    d.line([120 + body * 0.8, 100, 120 + body + arm * 0.6, 100 - arm * 0.4], fill=c, width=10)


# --- Fashion -----------------------------------------------------------------------------
def _tshirt(d: ImageDraw.ImageDraw, rng: np.random.Generator, c: Color) -> None:
    w, sl = rng.uniform(50, 65), rng.uniform(30, 50)
    d.polygon([(120 - 25, 30), (120 - w, 40), (120 - w - sl, 90), (120 - w - 10, 110),
               (120 - w, 90), (120 - w, 220), (120 + w, 220), (120 + w, 90), (120 + w + 10, 110),
               (120 + w + sl, 90), (120 + w, 40), (120 + 25, 30), (120, 50)], fill=c)
    if rng.random() < 0.5:
        d.rectangle([120 - w, 120, 120 + w, 135], fill=_color(rng))


def _dress(d: ImageDraw.ImageDraw, rng: np.random.Generator, c: Color) -> None:
    waist, hem = rng.uniform(22, 32), rng.uniform(70, 100)
    d.polygon([(120 - 30, 25), (120 + 30, 25), (120 + waist, 100), (120 + hem, 225),
               (120 - hem, 225), (120 - waist, 100)], fill=c)
    d.line([120 - 28, 25, 120 - 20, 5], fill=c, width=6)
    d.line([120 + 28, 25, 120 + 20, 5], fill=c, width=6)
    d.rectangle([120 - waist - 2, 95, 120 + waist + 2, 105], fill=_shade(c, 0.55))


def _shoe(d: ImageDraw.ImageDraw, rng: np.random.Generator, c: Color) -> None:
    h = rng.uniform(50, 80)
    sole = (240, 240, 240) if rng.random() < 0.5 else (40, 40, 40)
    d.rounded_rectangle([15, 170, 225, 195], 10, fill=sole)
    d.polygon([(20, 170), (20, 170 - h), (70, 170 - h), (110, 170 - h * 0.55), (190, 140),
               (222, 160), (222, 170)], fill=c)
    for k in range(4):
        x = 80 + 14 * k
        d.line([x, 170 - h * 0.8 + 8 * k, x + 10, 170 - h * 0.8 + 8 * k + 6], fill=_color(rng), width=3)


# --- Home --------------------------------------------------------------------------------
def _lamp(d: ImageDraw.ImageDraw, rng: np.random.Generator, c: Color) -> None:
    top, bot = rng.uniform(25, 40), rng.uniform(55, 80)
    d.polygon([(120 - top, 20), (120 + top, 20), (120 + bot, 100), (120 - bot, 100)], fill=c)
    d.rectangle([115, 100, 125, 205], fill=_shade(c, 0.4))
    base = rng.uniform(35, 55)
    d.ellipse([120 - base, 195, 120 + base, 225], fill=_shade(c, 0.4))


def _chair(d: ImageDraw.ImageDraw, rng: np.random.Generator, c: Color) -> None:
    seat, back = rng.uniform(60, 80), rng.uniform(70, 100)
    leg = _shade(c, 0.5)
    d.rectangle([120 - seat, 130, 120 + seat, 145], fill=c)
    d.rectangle([120 - seat, 130 - back, 120 - seat + 14, 145], fill=c)
    for x in (120 - seat + 4, 120 + seat - 10):
        d.rectangle([x, 145, x + 7, 228], fill=leg)
    for y in (130 - back + 12, 130 - back * 0.5):
        d.rectangle([120 - seat, y, 120 - seat + 14, y + 6], fill=_shade(c, 0.7))


def _mug(d: ImageDraw.ImageDraw, rng: np.random.Generator, c: Color) -> None:
    w, h = rng.uniform(45, 60), rng.uniform(70, 95)
    d.ellipse([120 + w - 25, 120 - h * 0.45, 120 + w + 35, 120 + h * 0.35], outline=c, width=12)
    d.rounded_rectangle([120 - w, 120 - h, 120 + w, 120 + h], 12, fill=c)
    d.ellipse([120 - w, 120 - h - 10, 120 + w, 120 - h + 10], fill=_shade(c, 0.5))
    if rng.random() < 0.6:
        d.ellipse([120 - 18, 100, 120 + 18, 136], fill=_color(rng))


# --- Stationary --------------------------------------------------------------------------
def _pen(d: ImageDraw.ImageDraw, rng: np.random.Generator, c: Color) -> None:
    w = rng.uniform(7, 12)
    d.rectangle([120 - w, 25, 120 + w, 185], fill=c)
    d.polygon([(120 - w, 185), (120 + w, 185), (120, 225)], fill=(230, 200, 160))
    d.polygon([(120 - 2, 218), (120 + 2, 218), (120, 226)], fill=(20, 20, 20))
    d.rectangle([120 + w, 35, 120 + w + 4, 90], fill=(180, 180, 190))
    d.rectangle([120 - w, 20, 120 + w, 30], fill=_shade(c, 0.6))


def _notebook(d: ImageDraw.ImageDraw, rng: np.random.Generator, c: Color) -> None:
    w, h = rng.uniform(55, 75), rng.uniform(80, 100)
    d.rectangle([120 - w, 120 - h, 120 + w, 120 + h], fill=c, outline=_shade(c, 0.5), width=3)
    for k in range(9):
        y = 120 - h + 12 + k * (2 * h - 24) / 8
        d.ellipse([120 - w - 8, y - 5, 120 - w + 8, y + 5], outline=(70, 70, 70), width=3)
    lw = rng.uniform(25, 45)
    d.rectangle([120 - lw + 10, 120 - h * 0.5, 120 + lw + 10, 120 - h * 0.3], fill=(245, 245, 235))


def _ruler(d: ImageDraw.ImageDraw, rng: np.random.Generator, c: Color) -> None:
    w = rng.uniform(14, 22)
    d.rectangle([120 - w, 10, 120 + w, 230], fill=c, outline=_shade(c, 0.5), width=2)
    for k in range(22):
        y = 16 + k * 10
        length = w * (1.2 if k % 5 == 0 else 0.6)
        d.line([120 - w, y, 120 - w + length, y], fill=(20, 20, 20), width=2)


FAMILIES: dict[str, tuple[Drawer, ...]] = {
    "Accessories": (_ring, _watch, _necklace),
    "Artifacts": (_vase, _statuette),
    "Fashion": (_tshirt, _dress, _shoe),
    "Home": (_lamp, _chair, _mug),
    "Stationary": (_pen, _notebook, _ruler),
}


# Each category's products share a hue band (gilded accessories, terracotta artifacts, pink
# and purple fashion, green home goods, blue stationery); saturation and brightness vary freely.
HUES: dict[str, float] = {
    "Accessories": 55, "Artifacts": 15, "Fashion": 310, "Home": 150, "Stationary": 230,
}
_HUE_SPREAD = 10


def _pick_color(category: str, rng: np.random.Generator) -> Color:
    hue = (HUES[category] + rng.uniform(-_HUE_SPREAD, _HUE_SPREAD)) % 360 / 360
    r, g, b = colorsys.hsv_to_rgb(hue, rng.uniform(0.5, 0.9), rng.uniform(0.5, 0.95))
    return int(r * 255), int(g * 255), int(b * 255)


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Mostly light studio backgrounds (plain or gradient), sometimes coloured or cluttered."""
    kind = rng.random()
    light = kind < 0.8
    a = np.array(_color(rng, 200, 256) if light else _color(rng, 60, 256), float)
    b = np.array(_color(rng, 200, 256) if light else _color(rng, 60, 256), float)
    if not light:  # muted, so a background never looks like a category's colour
        a, b = (0.5 * c + 0.5 * c.mean() for c in (a, b))
    if kind < 0.45:
        return Image.new("RGB", (width, height), tuple(int(v) for v in a))
    if rng.random() < 0.5:
        t = np.linspace(0, 1, height)[:, None, None]
    else:
        t = np.linspace(0, 1, width)[None, :, None]
    grad = a * (1 - t) + b * t
    image = Image.fromarray(np.broadcast_to(grad, (height, width, 3)).astype(np.uint8), "RGB")
    if kind > 0.9:  # clutter: a few random soft shapes
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(2, 6))):
            x, y = rng.uniform(0, width), rng.uniform(0, height)
            r = rng.uniform(10, 45)
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape([x - r, y - r, x + r, y + r * rng.uniform(0.3, 1.5)], fill=_color(rng, 60, 256))
    return image


def _surface(category: str, rng: np.random.Generator) -> Image.Image | None:
    """A category's typical surface pattern as a mask (fabric prints, wood grain, glazes...)."""
    mask = Image.new("L", (_LAYER, _LAYER), 0)
    d = ImageDraw.Draw(mask)
    if category == "Fashion" and rng.random() < 0.8:  # stripes, checks or dots
        step, kind = int(rng.integers(10, 20)), rng.random()
        for k in range(0, _LAYER, step):
            if kind < 0.7:
                d.rectangle([0, k, _LAYER, k + step // 3], fill=255)
            if 0.35 < kind < 0.7:
                d.rectangle([k, 0, k + step // 3, _LAYER], fill=255)
            if kind >= 0.7:
                for j in range(0, _LAYER, step):
                    d.ellipse([j, k, j + step // 2, k + step // 2], fill=255)
    elif category == "Home" and rng.random() < 0.6:  # wood grain
        for k in range(0, _LAYER, int(rng.integers(6, 12))):
            d.line([(x, k + 3 * math.sin(x / 9 + k)) for x in range(0, _LAYER, 8)], fill=170, width=2)
    elif category == "Artifacts" and rng.random() < 0.8:  # glaze bands
        for _ in range(int(rng.integers(2, 5))):
            y = rng.uniform(30, 210)
            d.rectangle([0, y, _LAYER, y + rng.uniform(4, 10)], fill=255)
    elif category == "Accessories":  # metallic shine
        for k in range(_LAYER):
            d.line([k, 0, k - _LAYER, _LAYER], fill=int(110 * (0.5 + 0.5 * math.sin(k / 14))))
    else:
        return None
    return mask


def render(category: str, rng: np.random.Generator) -> Image.Image:
    """One synthetic product photo from ``category``'s family, roughly centred as in a shop."""
    drawers = FAMILIES[category]
    width, height = (int(v) for v in rng.integers(256, 360, size=2))
    image = _background(rng, width, height)
    layer = Image.new("RGBA", (_LAYER, _LAYER), (0, 0, 0, 0))
    drawers[int(rng.integers(len(drawers)))](ImageDraw.Draw(layer), rng, _pick_color(category, rng))
    surface = _surface(category, rng)
    if surface is not None:
        tint = (255, 255, 255) if rng.random() < 0.5 else _color(rng)
        layer.paste(tint, mask=ImageChops.multiply(layer.getchannel("A"), surface))
    layer = layer.rotate(float(rng.uniform(-10, 10)), resample=Image.Resampling.BICUBIC, expand=True)
    side = int(min(width, height) * rng.uniform(0.85, 1.0))
    layer = layer.resize((side, side), Image.Resampling.BICUBIC)
    x = int((width - side) / 2 + rng.uniform(-0.06, 0.06) * width)
    y = int((height - side) / 2 + rng.uniform(-0.06, 0.06) * height)
    image.paste(layer, (x, y), layer)
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.5))))
    noise = rng.normal(0, rng.uniform(2, 8), size=(height, width, 3))
    pixels = np.clip(np.asarray(image, float) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def generate(root: str | Path, images_per_class: int = 100, seed: int = 0) -> None:
    """Write the demo tree ``root/<Category>/NNNN.jpg`` (overwriting nothing else)."""
    root = Path(root)
    for label, category in enumerate(CLASS_NAMES):
        folder = root / category
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(images_per_class):
            rng = np.random.default_rng([seed, label, index])
            image = render(category, rng)
            image.save(folder / f"{index:04d}.jpg", quality=int(rng.integers(75, 96)))


def default_demo_root(cache_dir: str | Path) -> Path:
    """Where the demo data set lives inside a cache folder (``<cache_dir>/demo-v4``)."""
    return Path(cache_dir).expanduser() / f"demo-v{DEMO_VERSION}"


def ensure_demo_dataset(root: str | Path, images_per_class: int = 100, seed: int = 0) -> Path:
    """Generate the demo tree at ``root`` unless an identical one is already there.

    Written to a temporary sibling folder and renamed into place, so an interrupted run never
    leaves a half-written tree behind, and concurrent runs do not mix their files.
    """
    root = Path(root).expanduser().resolve()
    spec = {"version": DEMO_VERSION, "images_per_class": images_per_class, "seed": seed}
    marker = root / _MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == spec:
                return root
        except (OSError, ValueError):
            pass
        raise DataError(f"{root} holds a different demo data set; remove it or pick another data.root")
    if root.exists() and any(root.iterdir()):
        raise DataError(f"{root} exists and is not a demo data set; pick another data.root")
    root.parent.mkdir(parents=True, exist_ok=True)
    log.info("Writing the demo data set (%d images per class) to %s", images_per_class, root)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        generate(tmp, images_per_class, seed)
        (tmp / _MARKER).write_text(json.dumps(spec))
        if root.exists():
            root.rmdir()
        os.replace(tmp, root)
    except OSError:
        if (root / _MARKER).is_file():  # another process finished first: use its copy
            return root
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
