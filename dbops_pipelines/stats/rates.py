"""Counters to rates, safely. Pure.

PostgreSQL's counters only grow, except when they restart: a server restart, ``pg_stat_reset()``,
``pg_stat_statements_reset()``, a statement evicted and seen again. A rate across such an event
is unknown, never negative and never the whole counter divided by five minutes: ``None``.
"""

from __future__ import annotations


def counter_rate(prev: float | int | None, cur: float | int | None, seconds: float,
                 reset_between: bool = False) -> float | None:
    """(cur - prev) / seconds, or None when it cannot be known: no previous value, no time
    elapsed, a reset between the two samples, or the counter went backwards (a reset nobody
    announced)."""
    if prev is None or cur is None or seconds <= 0 or reset_between:
        return None
    if cur < prev:
        return None
    return (cur - prev) / seconds


def reset_between(prev_marker, cur_marker) -> bool:
    """Whether a reset marker (``stats_reset``, postmaster start time, ...) changed between two
    samples. A marker missing on either side is not evidence of a reset."""
    return prev_marker is not None and cur_marker is not None and prev_marker != cur_marker
