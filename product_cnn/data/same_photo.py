"""The same photo in another crop: photos whose pretrained features are nearly parallel.

Collectors screenshot one catalogue with other crops, zoom, black bars, rounded corners and JPEG
quality; the difference hash (:mod:`product_cnn.data.check`) misses most such copies. A pretrained
network's pooled features barely move under them, while another photo of the same product (another
angle, another background) moves them much more. The catalogue groups photos whose cosine
similarity reaches a threshold (chosen on planted copies: docs/data.md) and keeps each group in one
split and one fold, with the difference-hash groups. The features come from the finder a data
config names (``data.same_photo``, :class:`product_cnn.models.same_photo.SamePhotoFinder`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F


def connected_groups(paths: Sequence[str], links: Iterable[tuple[int, int]]) -> list[list[str]]:
    """The connected sets (size >= 2, each sorted) of ``paths`` under ``links`` (pairs of indices):
    union-find."""
    parent = list(range(len(paths)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in links:
        parent[find(a)] = find(b)
    groups: dict[int, list[str]] = {}
    for index, path in enumerate(paths):
        groups.setdefault(find(index), []).append(path)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


def similar_groups(paths: Sequence[str], features: torch.Tensor, threshold: float,
                   chunk: int = 1024) -> list[list[str]]:
    """Groups (size >= 2, sorted) of ``paths`` linked by a cosine similarity >= ``threshold``
    (connected sets). ``features`` is ``(N, D)``, or ``(N, S, D)`` for S views of each photo
    (centre crops): two photos' similarity is then the largest over every pair of views, so a
    zoomed copy meets its original's crop."""
    x = torch.as_tensor(features).float()
    x = F.normalize(x if x.ndim == 3 else x.unsqueeze(1), dim=2)  # (N, S, D)
    views, flat = x.shape[1], x.reshape(-1, x.shape[2])  # (N * S, D)

    def links() -> Iterator[tuple[int, int]]:
        for start in range(0, len(paths), chunk):
            block = x[start:start + chunk].reshape(-1, x.shape[2]) @ flat.T  # (n * S, N * S)
            sims = block.reshape(-1, views, len(paths), views).amax(dim=(1, 3))  # (n, N)
            for a, b in (sims >= threshold).nonzero().tolist():
                if a + start < b:
                    yield a + start, b

    return connected_groups(list(paths), links())


def merge_groups(*groupings: Sequence[Sequence[str]]) -> list[list[str]]:
    """The connected union of several groupings of paths (a path in two groups joins them)."""
    paths = sorted({p for grouping in groupings for group in grouping for p in group})
    index = {p: i for i, p in enumerate(paths)}
    return connected_groups(paths, ((index[g[0]], index[p]) for grouping in groupings for g in grouping
                                    for p in g[1:]))
