"""Checking a photo collection before training: unreadable files, sizes, modes, duplicates.

Every image is decoded once through :func:`open_image` (the same path training uses) and
described by an :class:`ImageInfo`: size, mode, format, a content hash (exact duplicates) and
a 256-bit difference hash of the upright image (near-duplicates: the same product shot twice,
re-encoded or resized). Results are cached under the cache directory, keyed like the decoded
image cache, so only the first run over a set of photos pays for the check.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from product_cnn.atomic import write_text
from product_cnn.data.cache import default_cache_dir, fingerprint
from product_cnn.data.folder import FolderTree, Sample
from product_cnn.data.images import open_image, pil_to_tensor
from product_cnn.data.same_photo import connected_groups, merge_groups
from product_cnn.errors import DataError, ImageLoadError

log = logging.getLogger(__name__)

HASH_SIDE = 16  # difference hash of a 16x17 thumbnail: 256 bits
NEAR_DUPLICATE_BITS = 16  # hashes this close (6% of the bits) are the same picture
_CHECK_VERSION = 2


@dataclass
class ImageInfo:
    """What the check learned about one file."""

    path: str
    error: str | None = None  # why it cannot be used; None when it decodes
    width: int = 0
    height: int = 0
    mode: str = ""
    format: str = ""
    sha256: str = ""
    dhash: str = ""  # hex


def difference_hash(image) -> str:
    """256-bit dHash (hex): brighter-than-right-neighbour bits of the upright 16x17 thumbnail.

    Why 256 bits and a threshold of 16: docs/data.md.
    """
    small = pil_to_tensor(image, (HASH_SIDE, HASH_SIDE + 1)).float().mean(0)
    bits = (small[:, 1:] > small[:, :-1]).flatten().numpy()
    return np.packbits(bits).tobytes().hex()


def inspect_image(path: str) -> ImageInfo:
    """Decode ``path`` and describe it; an unreadable file gets ``error`` instead of raising."""
    info = ImageInfo(path)
    try:
        with open_image(path) as image:
            info.width, info.height = image.size
            info.mode, info.format = image.mode, image.format or ""
            info.dhash = difference_hash(image)
        info.sha256 = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except ImageLoadError as err:
        info.error = err.reason or str(err)
    return info


def inspect_images(paths: Sequence[str], cache_dir: str | Path | None = None,
                   workers: int = 4) -> list[ImageInfo]:
    """:func:`inspect_image` for every path (in that order), cached under ``cache_dir``."""
    cache_file = None
    if cache_dir is not None:
        key = fingerprint(paths, [_CHECK_VERSION, NEAR_DUPLICATE_BITS])
        cache_file = Path(cache_dir).expanduser() / "checks" / f"{key}.json"
        try:
            return [ImageInfo(**item) for item in json.loads(cache_file.read_text())]
        except (OSError, ValueError, TypeError):
            pass  # not there yet, or unreadable: check again
    with ThreadPoolExecutor(workers) as pool:  # Pillow decodes without holding the GIL
        infos = list(pool.map(inspect_image, paths))
    if cache_file is not None:
        write_text(cache_file, json.dumps([asdict(i) for i in infos]))
    return infos


def duplicate_groups(infos: Sequence[ImageInfo], max_bits: int = NEAR_DUPLICATE_BITS) -> list[list[str]]:
    """Groups (size >= 2) of identical or near-identical images, each a sorted list of paths.

    Two images are linked when their bytes are equal or their difference hashes differ in at
    most ``max_bits`` bits; groups are the connected sets (union-find). Quadratic in the
    number of images, which is fine up to some tens of thousands of photos.
    """
    good = [i for i in infos if i.error is None]

    def links() -> Iterator[tuple[int, int]]:
        first_with: dict[str, int] = {}
        for index, info in enumerate(good):
            if info.sha256 in first_with:
                yield index, first_with[info.sha256]
            first_with.setdefault(info.sha256, index)
        if good:
            bits = np.unpackbits(np.array([np.frombuffer(bytes.fromhex(i.dhash), np.uint8) for i in good]),
                                 axis=1).astype(bool)
            for index in range(len(good) - 1):
                distance = (bits[index] != bits[index + 1:]).sum(1)
                for other in np.nonzero(distance <= max_bits)[0]:
                    yield index, index + 1 + int(other)

    return connected_groups([i.path for i in good], links())


def exact_duplicate_groups(infos: Sequence[ImageInfo]) -> list[list[str]]:
    """Groups of byte-identical files."""
    by_hash: dict[str, list[str]] = {}
    for info in infos:
        if info.error is None:
            by_hash.setdefault(info.sha256, []).append(info.path)
    return sorted(sorted(g) for g in by_hash.values() if len(g) > 1)


def size_and_mode_summary(infos: Sequence[ImageInfo]) -> str:
    """Image sizes (min/median/max), modes and formats, in a few lines."""
    good = [i for i in infos if i.error is None]
    if not good:
        return "no readable images"
    widths = np.array([i.width for i in good])
    heights = np.array([i.height for i in good])
    modes = Counter(i.mode for i in good).most_common()
    formats = Counter(i.format for i in good).most_common()
    return (
        f"sizes: width {widths.min()}-{int(np.median(widths))}-{widths.max()}, "
        f"height {heights.min()}-{int(np.median(heights))}-{heights.max()} (min-median-max)\n"
        f"modes: {', '.join(f'{m} {n}' for m, n in modes)}\n"
        f"formats: {', '.join(f'{f} {n}' for f, n in formats)}"
    )


@dataclass
class TreeCheck:
    """The outcome of :func:`check_tree`."""

    infos: list[ImageInfo]
    bad: list[ImageInfo]  # unreadable files (left out when skipped)
    groups: list[list[str]]  # near-duplicate groups among the readable files (difference hash)
    leaks: list[dict[str, list[str]]]  # pre-split trees: groups spread over several splits
    same_photo: list[list[str]] = field(default_factory=list)  # groups by the finder's features
    same_photo_rule: str = ""  # how the finder compares ("" when none ran)

    @property
    def all_groups(self) -> list[list[str]]:
        """The hash's and the finder's groups, joined where they share a photo."""
        return merge_groups(self.groups, self.same_photo) if self.same_photo else self.groups


def check_tree(tree: FolderTree, cache_dir: str | Path | None, skip_bad: bool = False,
               same_photo: Any = None) -> TreeCheck:
    """Decode every image of ``tree``; drop or refuse unreadable ones; find near-duplicates (by the
    difference hash, and by ``same_photo``'s features when a finder is given).

    Raises :class:`DataError` listing the unreadable files unless ``skip_bad``; with it, they
    are removed from ``tree`` (in place) and listed in the log.
    """
    paths = sorted(p for samples in tree.splits.values() for p, _ in samples)
    infos = inspect_images(paths, cache_dir)
    bad = [i for i in infos if i.error is not None]
    if bad:
        level = logging.WARNING if skip_bad else logging.ERROR
        log.log(level, "%d unreadable image(s) in %s:\n%s", len(bad), tree.root,
                "\n".join(f"  {i.path}: {i.error}" for i in bad))
        if not skip_bad:
            raise DataError(
                f"{len(bad)} of {len(infos)} image(s) in {tree.root} cannot be read (all listed "
                f"above), e.g. {bad[0].path}: {bad[0].error}. Fix or remove them, or set "
                "data.skip_bad_images=true to train without them"
            )
        gone = {i.path for i in bad}
        labels_before = {label for samples in tree.splits.values() for _, label in samples}
        tree.splits = {s: [x for x in samples if x[0] not in gone] for s, samples in tree.splits.items()}
        labels_after = {label for samples in tree.splits.values() for _, label in samples}
        empty = [tree.class_names[label] for label in sorted(labels_before - labels_after)]
        if empty:
            raise DataError(f"class folder(s) with no readable images: {', '.join(empty)} in {tree.root}")
        log.warning("Left out %d unreadable image(s) (data.skip_bad_images=true)", len(bad))
    good = [i for i in infos if i.error is None]
    groups = duplicate_groups(good)
    found = TreeCheck(infos, bad, groups, [])
    if same_photo is not None:
        found.same_photo = same_photo.groups([i.path for i in good], cache_dir or default_cache_dir())
        found.same_photo_rule = same_photo.describe() if same_photo.available() else ""
    if tree.presplit:
        split_of = {p: s for s, samples in tree.splits.items() for p, _ in samples}
        for group in found.all_groups:
            where: dict[str, list[str]] = {}
            for path in group:
                where.setdefault(split_of[path], []).append(path)
            if len(where) > 1:
                found.leaks.append(where)
    return found


def check_report(check: TreeCheck, tree: FolderTree, splits: Mapping[str, Sequence[Sample]],
                 *, grouped: bool, show_groups: int = 20) -> str:
    """What ``check_data.py`` prints under the split table: sizes and modes, unreadable files,
    exact and near-duplicates (with the split each photo went to) and, for pre-split trees,
    near-duplicates shared between splits."""
    lines = [size_and_mode_summary(check.infos)]
    if tree.ignored:
        lines.append(f"ignored (not images): {len(tree.ignored)}, e.g. {', '.join(tree.ignored[:3])}")
    lines.append(f"unreadable: {len(check.bad)}")
    lines += [f"  {i.path}: {i.error}" for i in check.bad]
    exact = exact_duplicate_groups(check.infos)
    lines.append(f"exact duplicates: {len(exact)} group(s) of {sum(map(len, exact))} files")
    if check.same_photo_rule:
        hashed = {p for g in check.groups for p in g}
        new = sum(1 for g in check.same_photo for p in g if p not in hashed)
        same = check.same_photo
        lines.append(f"same photo in another crop ({check.same_photo_rule}): {len(same)} group(s) of "
                     f"{sum(map(len, same))} photos, {new} of them missed by the difference hash")
    groups = check.all_groups
    photos = sum(map(len, groups))
    lines.append(f"near-duplicates: {len(groups)} group(s) of {photos} photos"
                 + (", each kept within one split" if grouped and not tree.presplit else ""))
    split_of = {path: split for split, samples in splits.items() for path, _ in samples}
    for group in groups[:show_groups]:
        lines.append("  " + "  ".join(f"{p} [{split_of.get(p, '-')}]" for p in group))
    if len(groups) > show_groups:
        lines.append(f"  ... {len(groups) - show_groups} more (show_groups=N)")
    if tree.presplit:
        lines.append(f"near-duplicates across splits (leakage): {len(check.leaks)} group(s)")
    return "\n".join(lines)
