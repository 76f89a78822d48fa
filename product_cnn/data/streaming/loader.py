"""litdata's ``StreamingDataLoader`` with one fix for Lightning: a resumed epoch ends where Lightning
stops asking for batches.

``load_state_dict`` makes the next ``__iter__`` continue the checkpoint's epoch, and litdata clears
that only when the epoch's iterator runs to its end. Lightning stops after the epoch's last batch
without exhausting the iterator, so litdata would replay the resumed epoch instead of starting the
next one (a run resumed mid-epoch would then train on other batches than the uninterrupted run).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from litdata import StreamingDataLoader


class ResumableLoader(StreamingDataLoader):
    """A ``StreamingDataLoader`` whose resumed epoch counts as over once its batches were served."""

    _resumed_epoch_ran = False

    def __iter__(self) -> Iterator[Any]:
        if self.restore and self._resumed_epoch_ran:
            self.restore = False  # the resumed epoch was served: this is the next one
        self._resumed_epoch_ran = False
        resuming = self.restore
        for batch in super().__iter__():
            self._resumed_epoch_ran = resuming
            yield batch
