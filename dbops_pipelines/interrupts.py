"""SIGTERM handled like Ctrl-C: the one place that installs the handler.

Python's default action for SIGTERM (what systemd, Docker and Kubernetes send to stop a service,
and a run launcher or container runtime to stop a run worker) ends the process on the spot: no ``finally`` runs,
so pg_dump/pg_restore outlive it, a decrypted dump stays in the temp directory, an upload stays
open and a scratch database stays behind. Inside ``sigterm_as_interrupt()`` SIGTERM raises
``Terminated``, a KeyboardInterrupt, in the main thread, so exactly the clean-up that runs for
Ctrl-C runs for it: ``finally`` blocks, ``except BaseException`` aborts, psycopg's cancel of the
running query, and Dagster's handling of an interrupted step.

Neutral: no dagster import; the CLI's main() and the Dagster layer both use it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived; unwinds like Ctrl-C. ``signum`` gives the CLI its exit code (128 + 15)."""

    signum = signal.SIGTERM

    def __init__(self) -> None:
        super().__init__("terminated by SIGTERM")


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated in the main thread; the previous handler is
    restored on exit. Elsewhere than the main thread it does nothing (only the main thread may
    set handlers, and Python runs them there anyway)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def handler(_signum, _frame) -> None:
        nonlocal fired
        if fired:
            # The first one is already unwinding: a second must not cut the clean-up it started
            # short (killing pg_restore, dropping the scratch database). SIGKILL stays the way
            # to stop a clean-up that hangs.
            return
        fired = True
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
