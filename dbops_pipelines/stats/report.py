"""The HTML report of what changed on one target between two stats snapshots, in the spirit of
pg_profile: one self-contained file (inline CSS and SVG, no JavaScript, nothing fetched) that an
engineer attaches to an incident ticket.

Everything is computed from the two snapshots' section dicts (stats/sections/*: their docstrings
give the shapes) and a few stored series. Counters are turned into window deltas with the same
care as the rates: a reset, a restart, a statement evicted and seen again, a counter going
backwards never gives a negative or inflated number; the affected values are the last snapshot's
(counted since the reset) and are marked so. A section or key a snapshot lacks reads "not
collected", never a crash. Every text that comes from the database or the configuration (query
texts, object and role names, the target, messages) is HTML-escaped.

``render_report`` is pure; ``build_report`` reads the history; ``write_report`` writes the file
atomically.
"""

from __future__ import annotations

import html
import math
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dbops_pipelines.errors import StatsFailed
from dbops_pipelines.findings import by_severity
from dbops_pipelines.stats.model import Snapshot
from dbops_pipelines.stats.rates import reset_between

if TYPE_CHECKING:
    from dbops_pipelines.stats.history import MetricsStore

TOP_STATEMENTS = 10        # rows per statement ranking
TABLE_ROWS = 25            # rows of the table growth and vacuum lists
QUERY_CHARS = 300          # the statements section already trims to this; older snapshots may not

# (title, metric names tried in order, how values read). The activity section stores its total
# as "client_connections" (a gauge may not end in _total); "connections_total" is the older name.
CHARTS = (
    ("Connections", ("client_connections", "connections_total"), "count"),
    ("Database size", ("database_size_bytes",), "bytes"),
    ("Statements per second", ("statements_calls_per_second",), "rate"),
    ("Cache hit ratio", ("cache_hit_ratio",), "ratio"),
)
CHART_METRICS = tuple(name for _, names, _ in CHARTS for name in names)

DATABASE_COUNTERS = ("xact_commit", "xact_rollback", "blks_read", "blks_hit", "deadlocks", "temp_files",
                     "temp_bytes", "conflicts", "tup_inserted", "tup_updated", "tup_deleted")
TABLE_COUNTERS = ("n_tup_ins", "n_tup_upd", "n_tup_del", "vacuum_count", "autovacuum_count",
                  "analyze_count", "autoanalyze_count")
TABLE_LISTS = ("top_by_size", "top_by_dead_tuples", "top_by_seq_tup_read")
INDEX_COUNTS = (("unused_indexes", "unused indexes"), ("duplicate_indexes", "duplicate indexes"),
                ("invalid_indexes", "invalid indexes"), ("fk_without_index", "foreign keys without an index"))

# How a statement's window numbers were obtained, and what the reader is told about it.
BASIS_NOTES = {
    "window": "",
    "since_reset": "since the reset",
    "backwards": "counters went backwards (evicted or reset): counted since it came back",
    "new": "new in window",
    "unknown_start": "not in the first snapshot's top lists: at most this (counted since recording began)",
}


# -- reading numbers and times tolerantly ----------------------------------------------------

def _num(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _section(snap: Snapshot, name: str) -> dict | None:
    data = snap.sections.get(name) if isinstance(snap.sections, dict) else None
    return data if isinstance(data, dict) else None


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _parse_iso(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return _utc(datetime.fromisoformat(text))
    except ValueError:
        return None


def _went_back(before: Any, after: Any) -> bool:
    """A counter known on both sides that decreased: a reset or an eviction."""
    a, b = _num(before), _num(after)
    return a is not None and b is not None and b < a


def _changed(before: Any, after: Any) -> bool:
    """A reset marker changed, or appeared: pg_stat_database.stats_reset is NULL until the first reset."""
    return reset_between(before, after) or (before is None and after is not None)


# -- formatting -----------------------------------------------------------------------------

def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _when(moment: datetime | None) -> str:
    return "n/a" if moment is None else _utc(moment).strftime("%Y-%m-%d %H:%M:%S UTC")


def _when_iso(text: Any) -> str:
    """Plain text (escape it for HTML): a stored ISO time, "never" for None."""
    moment = _parse_iso(text)
    return _when(moment) if moment else "never" if text is None else str(text)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n} {unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "min")) if n]
    return " ".join(parts + ([f"{secs} s"] if secs or not parts else []))


def _count(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{int(value):+,}" if signed else f"{int(value):,}"


def _bytes(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    sign = ("+" if value >= 0 else "-") if signed else ("-" if value < 0 else "")
    size = abs(value)
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{sign}{size:,.0f} {unit}" if unit == "bytes" else f"{sign}{size:,.1f} {unit}"
        size /= 1024
    return "n/a"   # not reached


def _ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value < 1000:
        return f"{value:,.2f} ms"
    if value < 120_000:
        return f"{value / 1000:,.2f} s"
    return f"{value / 60_000:,.1f} min"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.2f} %"


def _version(num: int | None) -> str:
    if not num:
        return "unknown"
    return f"{num // 10000}.{num % 10000}" if num >= 100000 else f"{num // 10000}.{num // 100 % 100}.{num % 100}"


def _value(value: float, kind: str) -> str:
    if kind == "bytes":
        return _bytes(value)
    if kind == "ratio":
        return _ratio(value)
    if kind == "rate":
        return f"{value:,.2f}/s"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


# -- the window: resets and deltas (pure) ----------------------------------------------------

def database_resets(first: dict | None, last: dict | None) -> list[str]:
    """Why the database counters of the window cannot be differenced; [] when they can."""
    if not first or not last:
        return []
    reasons = []
    if _changed(first.get("stats_reset"), last.get("stats_reset")):
        reasons.append(f"the database's statistics were reset at {_when_iso(last.get('stats_reset'))}")
    if reset_between(first.get("postmaster_start"), last.get("postmaster_start")):
        reasons.append(f"the server restarted at {_when_iso(last.get('postmaster_start'))}")
    if reset_between(first.get("datid"), last.get("datid")):
        reasons.append("the database was dropped and created again")
    if not reasons and any(_went_back(first.get(k), last.get(k)) for k in DATABASE_COUNTERS):
        reasons.append("the database's counters went backwards (a reset nobody announced)")
    return reasons


def statement_resets(first: dict | None, last: dict | None) -> list[str]:
    """Why pg_stat_statements' counters of the window cannot be differenced; [] when they can."""
    if not first or not last or not first.get("available") or not last.get("available"):
        return []
    reasons = []
    before, after = first.get("info") or {}, last.get("info") or {}
    if reset_between(before.get("stats_reset"), after.get("stats_reset")):
        reasons.append(f"pg_stat_statements was reset at {_when_iso(after.get('stats_reset'))}")
    if reset_between(first.get("dbid"), last.get("dbid")):
        reasons.append("the database was dropped and created again (pg_stat_statements' dbid changed)")
    pairs = ((before.get("dealloc"), after.get("dealloc")),
             ((first.get("totals") or {}).get("calls"), (last.get("totals") or {}).get("calls")))
    if not reasons and any(_went_back(a, b) for a, b in pairs):
        reasons.append("pg_stat_statements' counters went backwards (reset)")
    return reasons


@dataclass(frozen=True)
class StatementWindow:
    queryid: int | None
    userid: int | None
    role: str
    query: str
    calls: float
    total_ms: float
    rows: float | None
    basis: str       # a key of BASIS_NOTES

    @property
    def mean_ms(self) -> float | None:
        return self.total_ms / self.calls if self.calls > 0 else None


def _statement_numbers(st: dict) -> tuple[float | None, float | None, float | None]:
    total = st.get("total_exec_ms", st.get("total_ms"))
    return _num(st.get("calls")), _num(total), _num(st.get("rows"))


def statement_windows(first: dict | None, last: dict | None) -> list[StatementWindow]:
    """Each top statement of ``last`` with its calls, time and rows in the window; statements that
    did not run in it are left out. Never negative: see BASIS_NOTES for the other cases."""
    if not last or not last.get("available"):
        return []
    reset = bool(statement_resets(first, last))
    usable_first = bool(first and first.get("available"))
    first_top = [st for st in (first or {}).get("top") or [] if isinstance(st, dict)] if usable_first else []
    before = {(st.get("queryid"), st.get("userid")): st for st in first_top}
    # The first snapshot listed every statement of the database: one it lacks was not run yet.
    entries = _num(((first or {}).get("totals") or {}).get("entries"))
    first_complete = usable_first and entries is not None and entries <= len(first_top)
    out = []
    for st in last.get("top") or []:
        if not isinstance(st, dict):
            continue
        calls, total, rows = _statement_numbers(st)
        if calls is None or total is None:
            continue
        prev = before.get((st.get("queryid"), st.get("userid")))
        if reset:
            basis = "since_reset"
        elif prev is None:
            basis = "new" if first_complete else "unknown_start"
        else:
            p_calls, p_total, p_rows = _statement_numbers(prev)
            if any(_went_back(a, b) for a, b in ((p_calls, calls), (p_total, total), (p_rows, rows))):
                basis = "backwards"
            elif p_calls is None or p_total is None:
                basis = "unknown_start"
            else:
                basis = "window"
                calls, total = calls - p_calls, total - p_total
                rows = None if rows is None or p_rows is None else rows - p_rows
        if calls <= 0:
            continue
        query = " ".join(str(st.get("query") or "").split())
        out.append(StatementWindow(st.get("queryid"), st.get("userid"), str(st.get("role") or st.get("userid") or "?"),
                                   query if len(query) <= QUERY_CHARS else query[:QUERY_CHARS] + "…",
                                   calls, total, rows, basis))
    return out


def statements_totals(first: dict | None, last: dict | None) -> dict | None:
    """The database's calls, execution time and rows in the window (pg_stat_statements' totals);
    None when unknown. Across a reset: since the reset."""
    if not last or not last.get("available") or not first or not first.get("available"):
        return None
    after, before = last.get("totals") or {}, first.get("totals") or {}
    reset = bool(statement_resets(first, last))
    out = {}
    for key in ("calls", "total_exec_ms", "rows"):
        a, b = _num(before.get(key)), _num(after.get(key))
        out[key] = b if reset else None if a is None or b is None or b < a else b - a
    return out


def database_window(first: dict | None, last: dict | None) -> dict:
    """Counter deltas of the window (or since the reset), size growth and the window's cache hit
    ratio; a key is None when it cannot be known."""
    since_reset = bool(database_resets(first, last))
    out: dict[str, Any] = {"since_reset": since_reset}
    for key in DATABASE_COUNTERS:
        a = _num(first.get(key)) if first else None
        b = _num(last.get(key)) if last else None
        out[key] = None if b is None else b if since_reset else None if a is None else b - a
    before = _num(first.get("size_bytes")) if first else None
    after = _num(last.get("size_bytes")) if last else None
    out["size_bytes"], out["size_growth_bytes"] = after, None if after is None or before is None else after - before
    hits, reads = out["blks_hit"], out["blks_read"]
    out["cache_hit_ratio"] = hits / (hits + reads) if hits is not None and reads is not None and hits + reads > 0 else None
    return out


def _tables(data: dict | None) -> dict[str, dict]:
    """Every table of a tables-section dict's lists, by quoted name (the first list wins)."""
    found: dict[str, dict] = {}
    for key in TABLE_LISTS:
        for t in (data or {}).get(key) or []:
            if isinstance(t, dict) and t.get("name") is not None:
                found.setdefault(str(t["name"]), t)
    return found


def table_windows(first: dict | None, last: dict | None, database_reset: bool) -> list[dict]:
    """The tables of the last snapshot's lists with their window: size growth, rows written,
    vacuums and analyzes (None when the first snapshot did not list the table)."""
    before = _tables(first)
    out = []
    for name, t in _tables(last).items():
        p = before.get(name)
        if p is not None and t.get("oid") is not None and p.get("oid") is not None and p["oid"] != t["oid"]:
            p = None    # dropped and created again under the same name
        row = {"name": name, "now": t, "in_first": p is not None, "since_reset": False}
        if p is not None:
            row["since_reset"] = database_reset or any(_went_back(p.get(k), t.get(k)) for k in TABLE_COUNTERS)
            for k in TABLE_COUNTERS:
                a, b = _num(p.get(k)), _num(t.get(k))
                row[k] = None if b is None else b if row["since_reset"] else None if a is None else b - a
            for k in ("total_bytes", "table_bytes", "index_bytes"):
                a, b = _num(p.get(k)), _num(t.get(k))
                row[f"{k}_growth"] = None if a is None or b is None else b - a
            row["estimated"] = bool(t.get("size_estimated") or p.get("size_estimated"))
        out.append(row)
    return out


# -- HTML pieces ----------------------------------------------------------------------------

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d1d1f;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ccc}h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0 16px}th,td{border:1px solid #ddd;padding:3px 7px;vertical-align:top}
th{background:#f3f3f5;text-align:left}td.n{text-align:right;white-space:nowrap}
code{font:12px/1.3 ui-monospace,monospace;white-space:pre-wrap;word-break:break-word}
.note{background:#fff6d6;border:1px solid #e8c95a;padding:8px 12px;margin:12px 0}
.muted{color:#777}.mark{color:#8a5a00;font-size:12px}.critical{color:#b00020;font-weight:bold}
.warning{color:#8a5a00;font-weight:bold}.info{color:#245}.charts{display:flex;flex-wrap:wrap;gap:16px}
figure{margin:0}figcaption{font-weight:600;margin-bottom:4px}
"""


def _table(headers: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    """``headers`` and cells are HTML already (escape before)."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _not_collected(snap: Snapshot, name: str, which: str) -> str:
    why = (snap.errors or {}).get(name)
    return (f'<p class="muted">{_e(name)}: not collected in the {which} snapshot'
            f'{": " + _e(why) if why else ""}.</p>')


def _header(target: str, first: Snapshot, last: Snapshot, generated_at: datetime, resets: list[str]) -> str:
    seconds = (_utc(last.taken_at) - _utc(first.taken_at)).total_seconds()
    version = _version(last.server_version_num)
    if first.server_version_num != last.server_version_num:
        version = f"{_version(first.server_version_num)} → {version} (changed in the window)"
    db = _section(last, "database") or {}
    items = [("Target", _e(target)), ("Database", _e(db.get("database", "n/a"))),
             ("Window", f"{_when(first.taken_at)} .. {_when(last.taken_at)} ({_duration(seconds)})"),
             ("Server version", _e(version)), ("Generated at", _when(generated_at))]
    out = [f"<h1>PostgreSQL stats report: {_e(target)}</h1>", "<table>"]
    out += [f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in items]
    out.append("</table>")
    for which, snap in (("first", first), ("last", last)):
        if snap.errors:
            missing = ", ".join(f"{_e(k)} ({_e(v)})" for k, v in sorted(snap.errors.items()))
            out.append(f'<p class="muted">Not collected in the {which} snapshot: {missing}.</p>')
    if resets:
        out.append('<div class="note"><strong>Statistics were reset in this window:</strong> '
                   + "; ".join(_e(r) for r in resets)
                   + ". The counters affected are shown <em>since the reset</em>: they are the last snapshot's "
                     "values, not the change over the whole window, and are marked so below.</div>")
    return "\n".join(out)


def _statement_rows(ranked: list[StatementWindow], window_ms: float) -> list[list[str]]:
    rows = []
    for i, w in enumerate(ranked, start=1):
        bound = "≤ " if w.basis == "unknown_start" else ""
        share = min(100.0, w.total_ms / window_ms * 100) if window_ms > 0 else None
        rows.append([str(i), f'<code title="queryid {_e(w.queryid)}">{_e(w.query or "(no text)")}</code>', _e(w.role),
                     bound + _count(w.calls), bound + _ms(w.total_ms), _ms(w.mean_ms),
                     "n/a" if share is None else f"{bound}{share:.1f} %", bound + _count(w.rows),
                     f'<span class="mark">{_e(BASIS_NOTES[w.basis])}</span>'])
    return rows


def _statements(first: Snapshot, last: Snapshot) -> str:
    out = ['<section id="statements"><h2>Top statements in the window</h2>']
    before, after = _section(first, "statements"), _section(last, "statements")
    if after is None:
        return "\n".join(out + [_not_collected(last, "statements", "last"), "</section>"])
    if not after.get("available"):
        return "\n".join(out + [f'<p class="muted">pg_stat_statements not collected: {_e(after.get("reason", "unavailable"))}.</p>',
                                "</section>"])
    if before is None or not before.get("available"):
        out.append('<p class="mark">pg_stat_statements was not readable in the first snapshot: the numbers are '
                   "totals since it began recording, upper bounds for the window.</p>")
    resets = statement_resets(before, after)
    if resets:
        out.append('<p class="mark">' + _e("; ".join(resets)) + ": the statements are counted since the reset.</p>")
    dealloc = [_num((s.get("info") or {}).get("dealloc")) for s in (before or {}, after)]
    if not resets and None not in dealloc and dealloc[1] > dealloc[0]:
        out.append(f'<p class="mark">pg_stat_statements evicted its least-used entries {_count(dealloc[1] - dealloc[0])} '
                   "times in the window: some statements may be missing or undercounted (raise pg_stat_statements.max).</p>")
    windows = statement_windows(before, after)
    totals = statements_totals(before, after)
    exact_ms = sum(w.total_ms for w in windows if w.basis != "unknown_start")
    window_ms = max(exact_ms, (totals or {}).get("total_exec_ms") or 0.0)
    if totals:
        out.append(f"<p>In the window the database ran {_count(totals['calls'])} statements for "
                   f"{_ms(totals['total_exec_ms'])} of execution, returning or changing {_count(totals['rows'])} rows.</p>")
    if not windows:
        return "\n".join(out + ['<p class="muted">No statement of the top lists ran in the window.</p>', "</section>"])
    # queryids are signed: kept in the query's tooltip, out of the columns of (never negative) numbers
    headers = ["#", "Query", "Role", "Calls", "Total time", "Mean time", "% of total time", "Rows", "Note"]
    for title, key in (("by total time", lambda w: w.total_ms), ("by calls", lambda w: w.calls),
                       ("by rows", lambda w: w.rows or 0)):
        ranked = sorted(windows, key=key, reverse=True)[:TOP_STATEMENTS]
        out.append(f"<h3>{title}</h3>" + _table(headers, _statement_rows(ranked, window_ms), {0, 3, 4, 5, 6, 7}))
    return "\n".join(out + ["</section>"])


def _open_section(first: Snapshot, last: Snapshot, name: str, title: str) -> tuple[list[str], dict | None, dict | None]:
    """The start of a report section comparing ``name`` in both snapshots: its HTML so far and
    the two dicts. Without the last one the section is complete (it says why): ``after`` is None."""
    out = [f'<section id="{name}"><h2>{title}</h2>']
    before, after = _section(first, name), _section(last, name)
    if after is None:
        return out + [_not_collected(last, name, "last"), "</section>"], before, None
    if before is None:
        out.append(_not_collected(first, name, "first"))
    return out, before, after


def _database(first: Snapshot, last: Snapshot) -> str:
    out, before, after = _open_section(first, last, "database", "Database")
    if after is None:
        return "\n".join(out)
    w = database_window(before, after)
    label = "Since the reset" if w["since_reset"] else "In the window"
    rows = [
        ["Commits", _count(w["xact_commit"])], ["Rollbacks", _count(w["xact_rollback"])],
        ["Blocks read", _count(w["blks_read"])], ["Blocks hit", _count(w["blks_hit"])],
        ["Cache hit ratio", _ratio(w["cache_hit_ratio"])], ["Deadlocks", _count(w["deadlocks"])],
        ["Temporary files", _count(w["temp_files"])], ["Temporary bytes", _bytes(w["temp_bytes"])],
        ["Rows inserted / updated / deleted",
         " / ".join(_count(w[k]) for k in ("tup_inserted", "tup_updated", "tup_deleted"))],
        ["Recovery conflicts", _count(w["conflicts"])],
        ["Size now", _bytes(w["size_bytes"])], ["Size growth", _bytes(w["size_growth_bytes"], signed=True)],
    ]
    out.append(_table(["", label], rows, {1}))
    if w["since_reset"]:
        out.append('<p class="mark">Counted since the reset (the last snapshot\'s values); stats_reset now: '
                   f"{_e(_when_iso(after.get('stats_reset')))}.</p>")
    return "\n".join(out + ["</section>"])


def _tables_section(first: Snapshot, last: Snapshot, database_reset: bool) -> str:
    out, before, after = _open_section(first, last, "tables", "Tables and indexes")
    if after is None:
        return "\n".join(out)
    counts = [("tables", "tables"), ("indexes", "indexes")]
    rows = []
    for key, title in counts + list(INDEX_COUNTS):
        pick = (lambda d, k=key: (d or {}).get(k)) if key in ("tables", "indexes") else \
               (lambda d, k=key: ((d or {}).get("counts") or {}).get(k))
        a, b = _num(pick(before)), _num(pick(after))
        rows.append([_e(title), _count(a), _count(b), _count(None if a is None or b is None else b - a, signed=True)])
    out.append(_table(["", "First", "Last", "Change"], rows, {1, 2, 3}))

    # the tables section carries pg_stat_database.stats_reset too: a snapshot may lack the database section
    database_reset = database_reset or (before is not None and _changed(before.get("stats_reset"), after.get("stats_reset")))
    windows = table_windows(before, after, database_reset)
    if not windows:
        return "\n".join(out + ['<p class="muted">No table in the lists.</p>', "</section>"])
    by_growth = sorted(windows, key=lambda r: (r.get("total_bytes_growth") is None, -(r.get("total_bytes_growth") or 0),
                                               -(_num(r["now"].get("total_bytes")) or 0)))[:TABLE_ROWS]
    out.append("<h3>Growth and writes</h3>" + _table(
        ["Table", "Total size", "Growth", "Heap growth", "Index growth", "Inserted", "Updated", "Deleted",
         "Dead tuples now", "Note"],
        [[_e(r["name"]), _bytes(_num(r["now"].get("total_bytes"))), _bytes(r.get("total_bytes_growth"), signed=True),
          _bytes(r.get("table_bytes_growth"), signed=True), _bytes(r.get("index_bytes_growth"), signed=True),
          _count(r.get("n_tup_ins")), _count(r.get("n_tup_upd")), _count(r.get("n_tup_del")),
          _count(_num(r["now"].get("n_dead_tup"))), _table_note(r)] for r in by_growth], set(range(1, 9))))
    by_dead = sorted(windows, key=lambda r: -(_num(r["now"].get("n_dead_tup")) or 0))[:TABLE_ROWS]
    out.append("<h3>Vacuum and analyze</h3>" + _table(
        ["Table", "Dead tuples now", "Vacuums (manual / auto)", "Analyzes (manual / auto)", "Last vacuum",
         "Last autovacuum", "Last analyze", "Last autoanalyze", "Note"],
        [[_e(r["name"]), _count(_num(r["now"].get("n_dead_tup"))),
          f"{_count(r.get('vacuum_count'))} / {_count(r.get('autovacuum_count'))}",
          f"{_count(r.get('analyze_count'))} / {_count(r.get('autoanalyze_count'))}",
          *(_last_time(r["now"].get(k), first.taken_at) for k in ("last_vacuum", "last_autovacuum", "last_analyze",
                                                                   "last_autoanalyze")),
          _table_note(r)] for r in by_dead], {1, 2, 3}))
    return "\n".join(out + ["</section>"])


def _last_time(text: Any, window_start: datetime) -> str:
    moment = _parse_iso(text)
    within = moment is not None and moment >= _utc(window_start)
    return _e(_when_iso(text)) + (' <span class="mark">(in the window)</span>' if within else "")


def _table_note(row: dict) -> str:
    notes = []
    if not row["in_first"]:
        notes.append("not in the first snapshot's lists")
    if row["since_reset"]:
        notes.append("since the reset")
    if row.get("estimated"):
        notes.append("size estimated (the table was locked)")
    return f'<span class="mark">{_e("; ".join(notes))}</span>'


def _findings(last: Snapshot) -> str:
    out = ['<section id="findings"><h2>Findings of the last snapshot</h2>']
    if not last.findings:
        return "\n".join(out + ['<p class="muted">None.</p>', "</section>"])
    rows = [[f'<span class="{_e(f.severity)}">{_e(f.severity)}</span>', _e(f.code), _e(f.object or "(database)"),
             _e(f.message), _e(f.recommendation), f"<code>{_e(f.sql)}</code>" if f.sql else ""]
            for f in by_severity(list(last.findings))]
    out.append(_table(["Severity", "Code", "Object", "Message", "Recommendation", "SQL"], rows))
    return "\n".join(out + ["</section>"])


# -- charts ---------------------------------------------------------------------------------

CHART_W, CHART_H = 560, 200
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 84, 16, 14, 34


def svg_chart(title: str, points: list[tuple[datetime, float]], kind: str, start: datetime, end: datetime) -> str:
    """A line chart of ``points`` over [start, end] (widened to the points), min/max and time labels;
    "no data" when there is no finite point."""
    pts = _finite(points)
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{CHART_W}" height="{CHART_H}" '
            f'viewBox="0 0 {CHART_W} {CHART_H}" role="img" aria-label="{_e(title)}" data-points="{len(pts)}">'
            f"<title>{_e(title)}</title>"
            f'<rect x="{PAD_LEFT}" y="{PAD_TOP}" width="{CHART_W - PAD_LEFT - PAD_RIGHT}" '
            f'height="{CHART_H - PAD_TOP - PAD_BOTTOM}" fill="#fafafa" stroke="#ccc"/>')
    if not pts:
        return (head + f'<text x="{(CHART_W + PAD_LEFT) // 2}" y="{CHART_H // 2}" text-anchor="middle" '
                'fill="#888" font-size="14">no data</text></svg>')
    t0, t1 = min(_utc(start), pts[0][0]), max(_utc(end), pts[-1][0])
    span = (t1 - t0).total_seconds() or 1.0
    low, high = min(v for _, v in pts), max(v for _, v in pts)
    pad = 0.0 if high > low else (abs(high) * 0.05 or 1.0)   # a flat line sits in the middle
    # the axis shows what can be: no negative connections or sizes, no ratio above 1
    y_min, y_max = (max(0.0, low - pad) if low >= 0 else low - pad), high + pad
    if kind == "ratio" and high <= 1.0:
        y_max = min(1.0, y_max)
    if y_max <= y_min:
        y_max = y_min + 1.0
    plot_w, plot_h = CHART_W - PAD_LEFT - PAD_RIGHT, CHART_H - PAD_TOP - PAD_BOTTOM

    def xy(t: datetime, v: float) -> str:
        x = PAD_LEFT + (t - t0).total_seconds() / span * plot_w
        y = PAD_TOP + (y_max - v) / (y_max - y_min) * plot_h
        return f"{x:.1f},{y:.1f}"

    coords = [xy(t, v) for t, v in pts]
    dots = "".join(f'<circle cx="{c.split(",")[0]}" cy="{c.split(",")[1]}" r="2" fill="#2a62c9"/>'
                   for c in coords) if len(coords) <= 120 else ""
    time_format = "%H:%M" if t0.date() == t1.date() else "%m-%d %H:%M"
    labels = (f'<text x="{PAD_LEFT - 6}" y="{PAD_TOP + 10}" text-anchor="end" font-size="11">{_e(_value(y_max, kind))}</text>'
              f'<text x="{PAD_LEFT - 6}" y="{CHART_H - PAD_BOTTOM}" text-anchor="end" font-size="11">{_e(_value(y_min, kind))}</text>'
              f'<text x="{PAD_LEFT}" y="{CHART_H - 12}" font-size="11">{_e(t0.strftime(time_format))}</text>'
              f'<text x="{CHART_W - PAD_RIGHT}" y="{CHART_H - 12}" text-anchor="end" font-size="11">'
              f"{_e(t1.strftime(time_format))} UTC</text>")
    return (head + f'<polyline fill="none" stroke="#2a62c9" stroke-width="1.5" points="{" ".join(coords)}"/>'
            + dots + labels + "</svg>")


def _finite(points: list[tuple[datetime, float]]) -> list[tuple[datetime, float]]:
    return sorted(((_utc(t), float(v)) for t, v in points if _num(v) is not None), key=lambda p: p[0])


def _chart_summary(points: list[tuple[datetime, float]], kind: str) -> str:
    pts = _finite(points)
    if not pts:
        return ""
    values = [v for _, v in pts]
    return (f'<div class="muted">last {_e(_value(values[-1], kind))} · min {_e(_value(min(values), kind))} · '
            f"max {_e(_value(max(values), kind))} · {len(values)} points</div>")


def _charts(first: Snapshot, last: Snapshot, series: dict[str, list[tuple[datetime, float]]]) -> str:
    out = ['<section id="charts"><h2>Over the window</h2><div class="charts">']
    for title, names, kind in CHARTS:
        name = next((n for n in names if series.get(n)), names[0])
        out.append(f'<figure id="chart-{_e(names[0])}"><figcaption>{_e(title)} <span class="muted">({_e(name)})</span>'
                   f"</figcaption>{svg_chart(title, series.get(name) or [], kind, first.taken_at, last.taken_at)}"
                   f"{_chart_summary(series.get(name) or [], kind)}</figure>")
    return "\n".join(out + ["</div></section>"])


# -- the document ---------------------------------------------------------------------------

def render_report(target: str, first: Snapshot, last: Snapshot, series: dict[str, list[tuple[datetime, float]]],
                  generated_at: datetime) -> str:
    """The whole HTML document comparing ``first`` with ``last``. Pure: no I/O."""
    database_reasons = database_resets(_section(first, "database"), _section(last, "database"))
    resets = database_reasons + statement_resets(_section(first, "statements"), _section(last, "statements"))
    body = [
        _header(target, first, last, generated_at, resets),
        '<p><a href="#charts">Charts</a> · <a href="#statements">Statements</a> · <a href="#database">Database</a> · '
        '<a href="#tables">Tables and indexes</a> · <a href="#findings">Findings</a></p>',
        _charts(first, last, series or {}),
        _statements(first, last),
        _database(first, last),
        _tables_section(first, last, bool(database_reasons)),
        _findings(last),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Stats report: {_e(target)} {_when(first.taken_at)} .. {_when(last.taken_at)}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def build_report(store: MetricsStore, target: str, start: datetime, end: datetime) -> str:
    """The report of ``target`` from its first snapshot at or after ``start`` to its last at or
    before ``end``; StatsFailed when the window does not hold two snapshots."""
    first = store.snapshot_at_or_after(target, start)
    last = store.snapshot_at_or_before(target, end)
    if first is None or last is None or first.taken_at >= last.taken_at:
        found = 1 if first is not None and last is not None and first.taken_at == last.taken_at else 0
        raise StatsFailed(
            f"there are not two snapshots of target {target!r} between {_when(start)} and {_when(end)} "
            f"(found {found}): a report compares two",
            "widen the window (--from/--to; stats.report_window_hours for the daily report), or check that "
            "snapshots of this target are taken and kept (its stats schedule, `dbops stats history TARGET`)")
    series = {name: store.series(target, name, first.taken_at, last.taken_at) for name in CHART_METRICS}
    return render_report(target, first, last, series, datetime.now(timezone.utc))


def write_report(store: MetricsStore, target: str, start: datetime, end: datetime, out: str | Path) -> Path:
    """Build the report and write it to ``out`` atomically (a temporary file in the same
    directory, then a rename): a reader never sees half a report. Returns the resolved path."""
    path = Path(out).expanduser()
    directory = path.parent.resolve()
    if not directory.is_dir():
        raise StatsFailed(f"cannot write the report to {path}: the directory {directory} does not exist",
                          "create the directory first, or choose another --out")
    if path.is_dir():
        raise StatsFailed(f"cannot write the report to {path}: it is a directory", "give a file name, e.g. report.html")
    document = build_report(store, target, start, end)
    final = directory / path.name
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise StatsFailed(f"cannot write the report to {final}: {exc.strerror}",
                          "check the directory's permissions and free space") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(document)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)   # mkstemp makes it 0600; a report is meant to be read and attached
        os.replace(tmp, final)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise StatsFailed(f"cannot write the report to {final}: {exc.strerror}",
                          "check the directory's permissions and free space") from None
    return final
