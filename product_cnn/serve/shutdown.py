"""Stopping the server completely: SIGTERM (``kill <pid>``) as Ctrl-C does, and afterwards no
process the server started is left running or holding the port.

LitServe shuts its workers down on KeyboardInterrupt only; a plain SIGTERM ended the parent and
left its API and inference worker processes listening. Here SIGTERM raises KeyboardInterrupt in
the parent, and whatever child is still alive at the end is terminated, then killed.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
from collections.abc import Iterator
from types import FrameType

log = logging.getLogger(__name__)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def stop_children(timeout: float = 3.0) -> int:
    """Terminate every child process still alive (SIGTERM, then SIGKILL after ``timeout``); count them."""
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    for child in children:
        child.join(timeout)
        if child.is_alive():
            child.kill()
            child.join(1.0)
    return len(children)


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Run the server inside: SIGTERM stops it like Ctrl-C, and no child outlives it."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    except KeyboardInterrupt:
        log.info("Stopping the server")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the clean-up short
        left = stop_children()
        if left:
            log.info("Stopped %d server process(es) left running", left)
        signal.signal(signal.SIGTERM, previous)
