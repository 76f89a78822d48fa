"""Errors a user can act on. Entry points print their message in one line, no traceback."""

from __future__ import annotations


class ProductCNNError(Exception):
    """Base class: something about the user's data, config or files is wrong."""


class DataError(ProductCNNError):
    """The data folder is missing, empty or laid out in a way we cannot use."""


class ImageLoadError(DataError):
    """One image file cannot be decoded."""

    def __init__(self, path: str, reason: str | None = None) -> None:
        # A DataLoader worker re-raises it in the main process with one argument: the
        # worker's formatted traceback, whose last line carries our message.
        super().__init__(f"cannot read image {path}: {reason}" if reason is not None else path)
        self.path = path
        self.reason = reason


class CheckpointError(ProductCNNError):
    """A checkpoint is missing, truncated or belongs to another model or class list."""


class SweepError(ProductCNNError):
    """A sweep's own settings are wrong: every job would fail alike, so the whole sweep stops."""


def user_error(err: BaseException | None) -> ProductCNNError | None:
    """The :class:`ProductCNNError` that ``err`` was raised from (Hydra wraps it), if any."""
    while err is not None and not isinstance(err, ProductCNNError):
        err = err.__cause__ or err.__context__
    return err


def one_line(err: BaseException) -> str:
    """The user-facing line of ``err``, also when a DataLoader worker wrapped it in a traceback."""
    from omegaconf.errors import MissingMandatoryValue

    text = str(err).strip()
    if isinstance(err, MissingMandatoryValue):
        key = getattr(err, "full_key", "") or text
        return f"missing config value {key}: set it on the command line, e.g. {key}=..."
    last = text.splitlines()[-1] if text else type(err).__name__
    prefix = f"{type(err).__module__}.{type(err).__name__}: "
    return last[len(prefix):] if last.startswith(prefix) else last
