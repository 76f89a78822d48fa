"""Stopping the server as a service manager expects: on SIGTERM (``kill <pid>``) the requests in
flight are answered, new ones get 503, one line says "Stopped", and within about 2 s no process
the server started is left running or holding the port.

LitServe shuts its workers down on KeyboardInterrupt only; a plain SIGTERM ended the parent and
left its API and inference worker processes listening. Here SIGTERM in the parent marks the server
as stopping (:class:`DrainGuard` refuses new predictions), waits up to ``drain`` seconds for the
predictions in flight, then raises KeyboardInterrupt (LitServe's own shutdown); whatever child is
still alive at the end is terminated, then killed. The API processes are forked from the parent
and inherit its handler: there it ends the process quietly (uvicorn re-raises the signal after its
own graceful shutdown), with no traceback.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

from product_cnn.serve.limits import answer

log = logging.getLogger(__name__)

DRAIN_S = 1.0  # the longest wait for predictions in flight after SIGTERM
REFUSE_S = 0.25  # requests already sent when SIGTERM came reach the server in this time: 503
UVICORN_GRACE_S = 0.5  # uvicorn's own wait for open connections, once the predictions are drained


class Stopping:
    """What the parent and the forked API processes share: a stopping flag and the number of
    predictions in flight."""

    def __init__(self) -> None:
        self.event = multiprocessing.Event()
        self.in_flight = multiprocessing.Value("i", 0)

    def wait_drained(self, timeout: float, at_least: float = 0.0) -> int:
        """Wait up to ``timeout`` seconds for the predictions in flight (and ``at_least`` seconds, in
        which requests already sent reach the server and get 503); return how many are left."""
        start = time.monotonic()
        while time.monotonic() - start < timeout and (
                self.in_flight.value > 0 or time.monotonic() - start < at_least):
            time.sleep(0.01)
        return self.in_flight.value


class _QuietWhileStopping(logging.Filter):
    """uvicorn's INFO lines about its own shutdown, dropped once the server is stopping."""

    def __init__(self, stopping: Stopping) -> None:
        super().__init__()
        self.stopping = stopping

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not self.stopping.event.is_set()


class DrainGuard:
    """ASGI middleware: counts the predictions in flight; once stopping, a new one gets 503."""

    def __init__(self, app: Any, stopping: Stopping, path: str = "/predict") -> None:
        self.app, self.stopping, self.path = app, stopping, path
        logging.getLogger("uvicorn.error").addFilter(_QuietWhileStopping(stopping))  # in the API process

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") != self.path:
            await self.app(scope, receive, send)
            return
        if self.stopping.event.is_set():
            await answer(send, 503, "the server is stopping: send the request again shortly",
                         [(b"retry-after", b"1"), (b"connection", b"close")])
            return
        with self.stopping.in_flight.get_lock():
            self.stopping.in_flight.value += 1
        try:
            await self.app(scope, receive, send)
        finally:
            with self.stopping.in_flight.get_lock():
                self.stopping.in_flight.value -= 1


def stop_children(timeout: float = 1.0) -> int:
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
def stop_on_sigterm(drain: float = DRAIN_S) -> Iterator[Stopping]:
    """Build and run the server inside, with the :class:`Stopping` this yields: SIGTERM drains the
    predictions in flight (up to ``drain`` seconds), then stops it like Ctrl-C, and no child outlives
    it. One line in the log when it has stopped."""
    stopping = Stopping()
    parent, started, why = os.getpid(), [0.0], ["interrupted"]

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != parent:  # a forked API process whose own shutdown is over: end quietly
            raise SystemExit(0)
        started[0], why[0] = time.monotonic(), signal.Signals(signum).name
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the stop short
        logging.getLogger("litserve").setLevel(logging.WARNING)  # its shutdown story: our one line
        stopping.event.set()
        left = stopping.wait_drained(drain, at_least=min(REFUSE_S, drain))
        why[0] += f", {left} prediction(s) cut short" if left else ""
        raise KeyboardInterrupt(why[0])

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    failed = False
    try:
        yield stopping
    except KeyboardInterrupt:
        pass
    except Exception:  # the server did not start (its one-line error follows): no "Stopped" line
        failed = True
        raise
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stopping.event.set()
        left = stop_children()
        took = f" in {time.monotonic() - started[0]:.1f} s" if started[0] else ""
        if not failed:
            log.info("Stopped (%s)%s%s", why[0], took, f"; {left} process(es) ended by force" if left else "")
        signal.signal(signal.SIGTERM, previous)
