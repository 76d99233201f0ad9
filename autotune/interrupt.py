"""Stopping a study cleanly on Ctrl-C (SIGINT) or SIGTERM (docker stop, a scheduler).

Python raises KeyboardInterrupt wherever the main thread happens to be, e.g. between a lock's acquire and its
`try` inside SQLAlchemy, SQLite or MLflow; the cleanup that follows (failing the trial, queueing it again) can
then block forever on the lock the interrupt left behind. So while trials run, a first signal only sets a flag,
and the trial loop raises `StopRequested` at the next safe point: after the current batch of questions, or
between trials. A second signal raises KeyboardInterrupt at once (for a batch that takes too long).

Outside those blocks the `autotune` command (`install(exit_at_once=True)`) ends the process at once with exit
code 130 and one line: nothing is being written there that is not written whole (atomic files, database writes in
deferred blocks), while a KeyboardInterrupt raised inside an import (start-up imports torch, transformers and
MLflow for seconds) leaves modules half-initialised, and the next import fails with a misleading error.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator


class StopRequested(KeyboardInterrupt):
    """Raised at a safe point after SIGINT / SIGTERM; handled everywhere a KeyboardInterrupt is."""


class _Stop:
    def __init__(self) -> None:
        self.signals = 0
        self.deferring = False
        self.force_on_second = True
        self.exit_at_once = False

    def _handle(self, signum: int, frame) -> None:
        self.signals += 1
        if self.deferring and not (self.force_on_second and self.signals > 1):
            return
        if self.exit_at_once and not self.deferring:
            # os.write, not print: the signal may have cut a print to stderr short (re-entering it raises).
            os.write(2, b"\ninterrupted: stopped at once (nothing was being written); run the same command to "
                        b"resume\n")
            os._exit(130)
        raise KeyboardInterrupt

    def install(self, exit_at_once: bool = False) -> None:
        """Route SIGINT and SIGTERM through this object (call from the main thread). `exit_at_once`: outside
        deferred blocks, end the process with 130 instead of raising KeyboardInterrupt."""
        self.signals = 0
        self.exit_at_once = exit_at_once
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


def cause_of(error: BaseException | None, kind: type[BaseException]) -> BaseException | None:
    """The first exception of type `kind` in `error`'s chain (`__cause__`, else `__context__`), or None: libraries
    wrap what matters here (an interrupt, a storage outage) in exceptions of their own."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def ignore_signals_for_exit() -> None:
    """Ignore SIGINT and SIGTERM for the rest of the process: call once the command's work is committed.

    Python restores the default handlers early in interpreter shutdown, which then takes seconds with torch and
    MLflow loaded; a signal in that window would end a finished command by the signal (-15) instead of its exit
    code. Ignoring (not blocking, which holds for one thread only) survives the shutdown.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
