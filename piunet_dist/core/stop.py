"""Ctrl-C and SIGTERM: a command stops with one line and leaves nothing half done.

Commands that can simply be run again (pack, evaluate) stop where they are: raising_on_signals
turns the signal into Interrupted, and their clean-up removes what was half written. The
trainer must first finish its step and write a checkpoint: StopRequest only remembers the
signal, and the loop asks it between steps.
"""

from __future__ import annotations

import signal
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager

from .errors import UserError

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(UserError):
    """The command was stopped by a signal."""


@contextmanager
def raising_on_signals(what: str):
    """Within the block, SIGINT or SIGTERM raises Interrupted ('`what` interrupted by ...')."""

    def handler(signum, frame):
        raise Interrupted(f"{what} interrupted by {signal.Signals(signum).name}")

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class StopRequest:
    """Remembers SIGINT or SIGTERM (while installed) for the training loop to act on."""

    def __init__(self):
        self.signal: str | None = None
        self._previous = {}

    def install(self) -> None:
        self._previous = {s: signal.signal(s, self._remember) for s in SIGNALS}

    def uninstall(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    def _remember(self, signum, frame) -> None:
        self.signal = signal.Signals(signum).name


def ignore_interrupts_in_worker(_worker_id: int) -> None:
    """A DataLoader worker leaves Ctrl-C to its trainer, which still needs its batches."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def process_pool(workers: int):
    """Worker processes that end with the block, also when it is interrupted: the tasks not
    yet started are cancelled, not run to the end."""
    pool = ProcessPoolExecutor(max_workers=workers)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
