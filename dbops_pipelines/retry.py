"""The one retry helper of the core: call, and on a transient failure wait and call again.

Plain Python (no dagster): connections (pgtools.connect), dropping a scratch database and alert
sinks use it. Whole Dagster runs are retried by Dagster's RetryPolicy, not by this.

Only exceptions of the ``retry_on`` types are retried, and never one that ``give_up_on`` calls
permanent (a refused login: retrying only locks the account and hides the real message). An
interrupt (Ctrl-C, SIGTERM's Terminated) is never retried: it is no Exception, and the wait
between attempts ends with it at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def retry_call(
    fn: Callable[[], T],
    *,
    attempts: int,
    backoff_seconds: float,
    retry_on: tuple[type[Exception], ...],
    give_up_on: Callable[[Exception], bool] | None = None,
    on_retry: Callable[[int, Exception, float], None] | None = None,
    max_backoff_seconds: float | None = None,
    sleep: Callable[[float], object] | None = None,
) -> T:
    """``fn()``'s result, calling it up to ``attempts`` times.

    After attempt ``n`` (from 1) fails with an exception of a ``retry_on`` type that
    ``give_up_on`` (if given) does not call permanent, ``on_retry(n, exc, delay)`` is called and
    ``sleep(delay)`` waits ``backoff_seconds * 2**(n-1)`` seconds (capped by
    ``max_backoff_seconds``) before the next attempt. The exception of the last attempt, of a
    permanent failure, or of any other type propagates unchanged: the caller words the message.
    ``sleep`` defaults to ``time.sleep`` looked up at call time (tests inject their own).
    """
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise ValueError(f"retry_call needs attempts >= 1, got {attempts!r}")
    if backoff_seconds < 0 or (max_backoff_seconds is not None and max_backoff_seconds < 0):
        raise ValueError(f"retry_call needs non-negative waits, got backoff_seconds={backoff_seconds!r}, "
                         f"max_backoff_seconds={max_backoff_seconds!r}")
    if not isinstance(retry_on, tuple) or not retry_on or not all(isinstance(t, type) and issubclass(t, Exception) for t in retry_on):
        # BaseException would include KeyboardInterrupt: an operator's Ctrl-C must never be retried.
        raise TypeError(f"retry_on must be a non-empty tuple of Exception subclasses, got {retry_on!r}")
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except retry_on as exc:
            if attempt == attempts or (give_up_on is not None and give_up_on(exc)):
                raise
            delay = backoff_seconds * 2 ** (attempt - 1)
            if max_backoff_seconds is not None:
                delay = min(delay, max_backoff_seconds)
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            (sleep or time.sleep)(delay)
    raise AssertionError("unreachable: the last attempt returns or raises")
