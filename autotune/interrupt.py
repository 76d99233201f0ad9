"""Stopping a study cleanly on Ctrl-C (SIGINT) or SIGTERM (docker stop, a scheduler).

Python raises KeyboardInterrupt wherever the main thread happens to be, e.g. between a lock's acquire and its
`try` inside SQLAlchemy, SQLite or MLflow; the cleanup that follows (failing the trial, queueing it again) can
then block forever on the lock the interrupt left behind. So while trials run, a first signal only sets a flag,
and the trial loop raises `StopRequested` at the next safe point: after the current batch of questions, or
between trials. A second signal raises KeyboardInterrupt at once (for a batch that takes too long).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


class StopRequested(KeyboardInterrupt):
    """Raised at a safe point after SIGINT / SIGTERM; handled everywhere a KeyboardInterrupt is."""


class _Stop:
    def __init__(self) -> None:
        self.signals = 0
        self.deferring = False
        self.force_on_second = True

    def _handle(self, signum: int, frame) -> None:
        self.signals += 1
        if not self.deferring or (self.force_on_second and self.signals > 1):
            raise KeyboardInterrupt

    def install(self) -> None:
        """Route SIGINT and SIGTERM through this object (call from the main thread)."""
        self.signals = 0
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    @contextlib.contextmanager
    def deferred(self, force_on_second: bool = True) -> Iterator[None]:
        """Inside: a first signal only sets the flag (`check` raises); with `force_on_second`, a second raises."""
        saved = self.deferring, self.force_on_second
        self.deferring, self.force_on_second = True, force_on_second
        try:
            yield
        finally:
            self.deferring, self.force_on_second = saved

    def check(self) -> None:
        """Raise `StopRequested` if a signal arrived: call it where stopping leaves nothing half-written."""
        if self.signals:
            raise StopRequested


STOP = _Stop()
