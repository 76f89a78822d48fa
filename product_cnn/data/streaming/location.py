"""Where shards live: a local folder or object storage (``s3://``, ``gs://``), read and written
through litdata's own storage clients."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from product_cnn.atomic import write_text as write_local_text
from product_cnn.errors import DataError


def is_remote(location: str) -> bool:
    """True for an object-storage URL such as ``s3://bucket/prefix``."""
    return "://" in location and not location.startswith("file://")


def resolve(location: str) -> str:
    """An absolute local path, or the URL as given (without a trailing slash)."""
    if is_remote(location):
        return location.rstrip("/")
    return str(Path(location.removeprefix("file://")).expanduser().resolve())


def join(location: str, *parts: str) -> str:
    """``location/part/...`` for a folder or a URL."""
    if is_remote(location):
        return "/".join([location.rstrip("/"), *parts])
    return os.path.join(location, *parts)


def _provider(url: str, storage_options: dict[str, Any] | None) -> Any:
    from litdata.streaming.fs_provider import _get_fs_provider

    try:
        return _get_fs_provider(url, storage_options or {})
    except ValueError as err:
        raise DataError(f"{url}: {err}") from None


def exists(path: str, storage_options: dict[str, Any] | None = None) -> bool:
    """True if the file (or object) ``path`` exists."""
    if not is_remote(path):
        return os.path.isfile(path)
    return bool(_provider(path, storage_options).exists(path))


def read_text(path: str, storage_options: dict[str, Any] | None = None) -> str:
    """The text of a local file or an object."""
    if not is_remote(path):
        return Path(path).read_text()
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "file")
        _provider(path, storage_options).download_file(path, local)
        return Path(local).read_text()


def write_text(path: str, text: str, storage_options: dict[str, Any] | None = None) -> None:
    """Write ``text`` to a local file atomically, or upload it as one object (objects appear whole)."""
    if not is_remote(path):
        write_local_text(path, text)
        return
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "file")
        Path(local).write_text(text)
        _provider(path, storage_options).upload_file(local, path)
