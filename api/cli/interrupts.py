"""Ctrl-C and SIGTERM for a study driven in the CLI's own process.

Python raises ``KeyboardInterrupt`` (and a handler may raise anything) wherever the main
thread happens to be: inside a database commit, a cache write or a file lock. An exception
thrown there can leave a session or a lock half-done, and the stop that follows fails on
it. ``Interrupts`` raises only inside a stage's own computation, which holds no database
session or cache lock; a signal that arrives anywhere else is remembered, stops the study
loop at its next check and is raised when the next stage would start. A second signal while
one is pending raises at once: an impatient user is never ignored.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

__all__ = ["Interrupts", "Terminated"]


class Terminated(BaseException):
    """SIGTERM arrived: stop the study resumably, like Ctrl-C (a ``BaseException``, so no
    ``except Exception`` of a stage or of the trial runner records it as a failed trial)."""


def _exception_for(signum: int) -> BaseException:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


class Interrupts:
    """SIGINT and SIGTERM handlers that raise only inside ``computing()`` regions.

    Args:
        stop: set on the first signal, so that a loop between trials ends at its next check.
    """

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.pending: int | None = None
        self._depth = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        again = self.pending is not None
        if not again:
            self.pending = signum
        self.stop.set()
        if self._depth > 0 or again:
            self.check()

    def install(self) -> None:
        """Handle SIGINT and SIGTERM (main thread only, as Python's signals require)."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def ignore(self) -> None:
        """Ignore both signals while the stop itself is written (one stop at a time)."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def check(self) -> None:
        """Raise the pending signal's exception, if one arrived."""
        if self.pending is not None:
            raise _exception_for(self.pending)

    @contextlib.contextmanager
    def computing(self) -> Iterator[None]:
        """A region where raising is safe (a stage's own code): a pending signal raises on
        entry, a new one raises where it lands."""
        self.check()
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1

    def guard(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` run inside ``computing()``."""

        def guarded(*args: Any, **kwargs: Any) -> Any:
            with self.computing():
                return fn(*args, **kwargs)

        return guarded
