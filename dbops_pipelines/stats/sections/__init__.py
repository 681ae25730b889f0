"""One module per section of a snapshot (statements, database, activity, tables, health). Each
exposes ``SECTION``, a ``stats.model.Section``: how to collect it, turn counters into rates,
name its plotted/exported samples, and judge it against the thresholds."""

import re

from dbops_pipelines.redact import redact_sql

QUERY_CHARS = 300   # query texts kept per statement or session: enough to recognise it, bounded storage


def query_excerpt(query: str | None, chars: int = QUERY_CHARS) -> str:
    """A query text as snapshots keep it: passwords redacted *before* cutting (a running or
    recorded ``ALTER ROLE ... PASSWORD '...'`` must never reach history, alerts or metrics),
    whitespace collapsed, at most ``chars`` characters."""
    text = " ".join(redact_sql(query or "").split())
    return text if len(text) <= chars else text[:chars - 1] + "…"


_PLAIN_NAME = re.compile(r"[a-z_][a-z0-9_$]*")


def quoted_name(identifier: str | None) -> str:
    """A name as SQL spells it, for messages: bare when plain lower-case, else double-quoted with
    quotes doubled (what quote_ident does, minus reserved words). None reads "(unknown)"."""
    if identifier is None:
        return "(unknown)"
    return identifier if _PLAIN_NAME.fullmatch(identifier) else '"' + identifier.replace('"', '""') + '"'
