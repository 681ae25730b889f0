"""The ``statements`` section: the current database's busiest and slowest statements from
pg_stat_statements. Read only: it never resets the extension's statistics (that would erase the
history other tools and people rely on).

The extension is looked up in pg_extension first (it may live in any schema); a database without
it, or a server that does not preload the library (the view then raises an error), gives
``{"available": False, ...}`` and a ``pg_stat_statements_missing`` finding, not a failed section.

Shape of the collected dict::

    {"available": False, "reason": str, "database": str,
     "installed": bool, "loaded": bool}   # CREATE EXTENSION done here; library in shared_preload_libraries. Or:
    {
      "available": True,
      "database": str,               # quote_ident(current_database())
      "dbid": int,                   # a database dropped and created again under its name is a reset
      "extension_version": str, "extension_schema": str,
      "max": int | None,             # the pg_stat_statements.max setting (server-wide)
      "entries_server": int,         # entries in the whole view, to compare with max
      "totals": {"entries": int, "calls": int, "total_exec_ms": float, "rows": int},   # this database
      "info": {"dealloc": int, "stats_reset": str} | None,   # pg_stat_statements_info, extension 1.9 (PG 14)+
      "top_n": int,
      "slow_statement_min_calls": int,   # the threshold when collected: statement_mean_seconds_max uses it
      "top": [{                      # top_n by total time, by mean time and by calls, one row per (userid, queryid)
        "queryid": int, "userid": int, "role": str,
        "calls": int, "total_exec_ms": float, "mean_exec_ms": float | None, "max_exec_ms": float,
        "rows": int, "shared_blks_hit": int, "shared_blks_read": int, "temp_blks": int,
        "query": str,               # whitespace collapsed, at most 300 characters
        "rankings": {"total_time": int, "mean_time": int, "calls": int}   # only the rankings it is in
      }, ...],
    }

Rates: ``seconds``, ``reset`` (bool), ``dealloc_in_window`` (int | None), ``calls_per_second``,
``exec_ms_per_second``, ``rows_per_second`` (None across a reset, an eviction, or a counter going
backwards) and ``statements``: ``{"<queryid>/<userid>": {"queryid", "userid", "calls_in_window",
"calls_per_second", "mean_exec_ms"}}`` for the top statements seen in both snapshots.
"""

from __future__ import annotations

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from dbops_pipelines.findings import Finding
from dbops_pipelines.stats.model import CollectEnv, Sample, Section
from dbops_pipelines.stats.rates import counter_rate, reset_between
from dbops_pipelines.stats.sections import query_excerpt
from dbops_pipelines.stats.sections.database import iso_utc

LABELLED_STATEMENTS = 10   # per-statement series: a bounded label set for Prometheus
RANKINGS = ("total_time", "mean_time", "calls")

EXTENSION_QUERY = """
SELECT e.extversion, n.nspname, quote_ident(current_database()) AS database,
       (SELECT oid FROM pg_database WHERE datname = current_database())::bigint AS dbid,
       current_setting('pg_stat_statements.max', true)::int AS max
FROM (SELECT 1) one
LEFT JOIN pg_extension e ON e.extname = 'pg_stat_statements'
LEFT JOIN pg_namespace n ON n.oid = e.extnamespace
"""

TOTALS_QUERY = """
SELECT count(*) AS entries_server,
       count(*) FILTER (WHERE s.dbid = %(dbid)s) AS entries,
       coalesce(sum(s.calls) FILTER (WHERE s.dbid = %(dbid)s), 0)::bigint AS calls,
       coalesce(sum(s.{total}) FILTER (WHERE s.dbid = %(dbid)s), 0)::float8 AS total_exec_ms,
       coalesce(sum(s.rows) FILTER (WHERE s.dbid = %(dbid)s), 0)::bigint AS rows
FROM {function}(false) s
"""

# One row per (userid, queryid): with pg_stat_statements.track = all a statement may have a
# top-level and a nested entry; they are added up. Query texts only for the rows returned.
TOP_QUERY = """
WITH per_statement AS (
    SELECT s.userid, s.queryid, sum(s.calls)::bigint AS calls, sum(s.{total})::float8 AS total_exec_ms,
           max(s.{max})::float8 AS max_exec_ms, sum(s.rows)::bigint AS rows,
           sum(s.shared_blks_hit)::bigint AS shared_blks_hit, sum(s.shared_blks_read)::bigint AS shared_blks_read,
           sum(s.temp_blks_read + s.temp_blks_written)::bigint AS temp_blks
    FROM {function}(false) s
    WHERE s.dbid = %(dbid)s AND s.queryid IS NOT NULL
    GROUP BY s.userid, s.queryid
), ranked AS (
    SELECT p.*, p.total_exec_ms / nullif(p.calls, 0) AS mean_exec_ms,
           row_number() OVER (ORDER BY p.total_exec_ms DESC, p.queryid, p.userid) AS rank_total_time,
           row_number() OVER (ORDER BY p.total_exec_ms / nullif(p.calls, 0) DESC NULLS LAST, p.queryid, p.userid)
               AS rank_mean_time,
           row_number() OVER (ORDER BY p.calls DESC, p.queryid, p.userid) AS rank_calls
    FROM per_statement p
), top AS (
    SELECT * FROM ranked
    WHERE rank_total_time <= %(n)s OR rank_mean_time <= %(n)s OR rank_calls <= %(n)s
), texts AS (
    SELECT q.userid, q.queryid, left(min(q.query), 4000) AS query
    FROM {view} q JOIN top t ON t.userid = q.userid AND t.queryid = q.queryid
    WHERE q.dbid = %(dbid)s
    GROUP BY q.userid, q.queryid
)
SELECT t.queryid, t.userid::bigint AS userid, t.userid::regrole::text AS role, t.calls, t.total_exec_ms,
       t.mean_exec_ms, t.max_exec_ms, t.rows, t.shared_blks_hit, t.shared_blks_read, t.temp_blks,
       t.rank_total_time, t.rank_mean_time, t.rank_calls, x.query
FROM top t LEFT JOIN texts x ON x.userid = t.userid AND x.queryid = t.queryid
ORDER BY t.rank_total_time
"""

INFO_QUERY = "SELECT dealloc, stats_reset FROM {info}"


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def statement_key(queryid: int, userid: int) -> str:
    return f"{queryid}/{userid}"


def _min_calls(env: CollectEnv) -> int:
    thresholds = getattr(env.settings, "thresholds", None)
    return int(getattr(thresholds, "slow_statement_min_calls", None) or 1)


def collect(conn: psycopg.Connection, env: CollectEnv) -> dict:
    cur = conn.cursor(row_factory=dict_row)
    ext = cur.execute(EXTENSION_QUERY).fetchone()
    loaded = ext["max"] is not None   # the library defines pg_stat_statements.max when it is loaded
    if ext["extversion"] is None:
        return {"available": False, "database": ext["database"], "installed": False, "loaded": loaded,
                "reason": f"the pg_stat_statements extension is not installed in database {ext['database']}"}
    schema, version = ext["nspname"], version_tuple(ext["extversion"])
    # Extension 1.8 (PG 13) renamed total_time to total_exec_time; an extension not updated after a
    # server upgrade keeps its old columns, so the extension's version decides, not the server's.
    names = {"total": "total_exec_time", "max": "max_exec_time"} if version >= (1, 8) else \
            {"total": "total_time", "max": "max_time"}
    parts = {key: sql.Identifier(col) for key, col in names.items()}
    parts["function"] = sql.Identifier(schema, "pg_stat_statements")
    parts["view"] = sql.Identifier(schema, "pg_stat_statements")
    params = {"dbid": ext["dbid"], "n": env.top_n}
    try:
        with conn.transaction():   # a savepoint: a library that is not loaded must not abort the section
            totals = cur.execute(sql.SQL(TOTALS_QUERY).format(**parts), params).fetchone()
    except psycopg.errors.ObjectNotInPrerequisiteState:
        return {"available": False, "database": ext["database"], "installed": True, "loaded": False,
                "reason": "the pg_stat_statements extension is installed in database "
                          f"{ext['database']} but the server does not load the library "
                          "(it is not in shared_preload_libraries)"}
    info = None
    if version >= (1, 9) and env.server_version_num >= 140000:
        row = cur.execute(sql.SQL(INFO_QUERY).format(info=sql.Identifier(schema, "pg_stat_statements_info"))).fetchone()
        info = {"dealloc": int(row["dealloc"]), "stats_reset": iso_utc(row["stats_reset"])}
    top = [_statement(row, env.top_n) for row in cur.execute(sql.SQL(TOP_QUERY).format(**parts), params).fetchall()]
    return {
        "available": True, "database": ext["database"], "dbid": ext["dbid"],
        "extension_version": ext["extversion"], "extension_schema": schema, "max": ext["max"],
        "entries_server": int(totals["entries_server"]),
        "totals": {"entries": int(totals["entries"]), "calls": int(totals["calls"]),
                   "total_exec_ms": float(totals["total_exec_ms"]), "rows": int(totals["rows"])},
        "info": info, "top_n": env.top_n, "slow_statement_min_calls": _min_calls(env), "top": top,
    }


def _statement(row: dict, top_n: int) -> dict:
    rankings = {name: int(row[f"rank_{name}"]) for name in RANKINGS if row[f"rank_{name}"] <= top_n}
    return {
        "queryid": int(row["queryid"]), "userid": int(row["userid"]), "role": row["role"],
        "calls": int(row["calls"]), "total_exec_ms": float(row["total_exec_ms"]),
        "mean_exec_ms": None if row["mean_exec_ms"] is None else float(row["mean_exec_ms"]),
        "max_exec_ms": float(row["max_exec_ms"]), "rows": int(row["rows"]),
        "shared_blks_hit": int(row["shared_blks_hit"]), "shared_blks_read": int(row["shared_blks_read"]),
        "temp_blks": int(row["temp_blks"]), "query": query_excerpt(row["query"]),
        "rankings": rankings,
    }


def rates(prev: dict | None, cur: dict, seconds: float) -> dict:
    if prev is None or not prev.get("available") or not cur.get("available"):
        return {}
    prev_info, cur_info = prev.get("info") or {}, cur.get("info") or {}
    reset = (reset_between(prev_info.get("stats_reset"), cur_info.get("stats_reset"))
             or reset_between(prev.get("dbid"), cur.get("dbid")))
    dealloc = counter_rate(prev_info.get("dealloc"), cur_info.get("dealloc"), 1.0, reset)
    if dealloc is None and prev_info.get("dealloc") is not None and cur_info.get("dealloc") is not None:
        reset = True   # dealloc went backwards: the statistics were reset
    dealloc_in_window = None if dealloc is None else int(dealloc)
    # An eviction removes a statement's counts from the totals: their difference is then no rate.
    totals_unknown = reset or bool(dealloc_in_window)
    pt, ct = prev.get("totals") or {}, cur.get("totals") or {}
    out = {
        "seconds": seconds, "reset": reset, "dealloc_in_window": dealloc_in_window,
        "calls_per_second": counter_rate(pt.get("calls"), ct.get("calls"), seconds, totals_unknown),
        "exec_ms_per_second": counter_rate(pt.get("total_exec_ms"), ct.get("total_exec_ms"), seconds, totals_unknown),
        "rows_per_second": counter_rate(pt.get("rows"), ct.get("rows"), seconds, totals_unknown),
        "statements": {},
    }
    before = {statement_key(s["queryid"], s["userid"]): s for s in prev.get("top") or []}
    for st in cur.get("top") or []:
        key = statement_key(st["queryid"], st["userid"])
        if key in before:
            out["statements"][key] = statement_window(before[key], st, seconds, reset)
    return out


def statement_window(prev: dict, cur: dict, seconds: float, reset: bool) -> dict:
    """One statement's calls and mean time in the window. Valid while both its counters grew:
    an eviction elsewhere does not touch them; its own eviction and return shows as going backwards."""
    calls = counter_rate(prev["calls"], cur["calls"], 1.0, reset)
    exec_ms = counter_rate(prev["total_exec_ms"], cur["total_exec_ms"], 1.0, reset)
    known = calls is not None and exec_ms is not None
    return {
        "queryid": cur["queryid"], "userid": cur["userid"],
        "calls_in_window": int(calls) if known else None,
        "calls_per_second": calls / seconds if known and seconds > 0 else None,
        "mean_exec_ms": exec_ms / calls if known and calls > 0 else None,
    }


def evidence(st: dict, rates: dict, min_calls: int) -> tuple[float, int, str] | None:
    """(mean ms, calls, where from) to judge a statement on, or None. With a window since the
    previous snapshot, the window alone: a statement that ran fewer than ``min_calls`` times in it
    is not judged now (judging it on its whole history instead would make a once-slow statement
    fire and resolve on alternate snapshots as it runs or not). Without a window (the first
    snapshot, a reset, the statement new or evicted), its recorded history."""
    window = (rates.get("statements") or {}).get(statement_key(st["queryid"], st["userid"])) if rates else None
    if window and window.get("calls_in_window") is not None:
        if window["mean_exec_ms"] is not None and window["calls_in_window"] >= min_calls:
            return window["mean_exec_ms"], window["calls_in_window"], f"in the last {rates['seconds']:.0f} s"
        return None
    if st["mean_exec_ms"] is not None and st["calls"] >= min_calls:
        return st["mean_exec_ms"], st["calls"], "since pg_stat_statements began recording it"
    return None


def samples(data: dict, rates: dict) -> list[Sample]:
    out = [Sample("statements_available", 1.0 if data.get("available") else 0.0,
                  help="Whether pg_stat_statements can be read in the database (1) or not (0)")]
    if not data.get("available"):
        return out
    out += [
        Sample("statements_entries", float(data["entries_server"]), help="Entries in pg_stat_statements (whole server)"),
        Sample("statements_calls_total", float(data["totals"]["calls"]), kind="counter",
               help="Calls of the statements recorded for this database"),
        Sample("statements_exec_seconds_total", data["totals"]["total_exec_ms"] / 1000, kind="counter",
               help="Execution time of the statements recorded for this database"),
    ]
    if data.get("max") is not None:
        out.append(Sample("statements_max", float(data["max"]), help="The pg_stat_statements.max setting"))
    if data.get("info"):
        out.append(Sample("statements_dealloc_total", float(data["info"]["dealloc"]), kind="counter",
                          help="Times pg_stat_statements evicted its least-used entries"))
    if rates.get("calls_per_second") is not None:
        out.append(Sample("statements_calls_per_second", rates["calls_per_second"], help="Statement calls per second"))
    if rates.get("exec_ms_per_second") is not None:
        out.append(Sample("statements_exec_seconds_per_second", rates["exec_ms_per_second"] / 1000,
                          help="Seconds spent executing statements per second (average busy backends)"))
    means = [e[0] for st in data["top"] if (e := evidence(st, rates, data.get("slow_statement_min_calls", 1)))]
    if means:
        out.append(Sample("statement_mean_seconds_max", max(means) / 1000,
                          help="Slowest mean execution time among the top statements"))
    out += _per_statement_samples(data["top"])
    return out


def _per_statement_samples(top: list[dict]) -> list[Sample]:
    """Top 10 by total time; a statement run by several roles is one series (its queryid)."""
    by_total = sorted((st for st in top if "total_time" in st["rankings"]), key=lambda st: st["rankings"]["total_time"])
    sums: dict[int, list[float]] = {}
    for st in by_total:
        if st["queryid"] not in sums and len(sums) == LABELLED_STATEMENTS:
            continue
        calls_ms = sums.setdefault(st["queryid"], [0.0, 0.0])
        calls_ms[0] += st["calls"]
        calls_ms[1] += st["total_exec_ms"]
    out = []
    for queryid, (calls, total_ms) in sums.items():
        labels = (("queryid", str(queryid)),)
        out.append(Sample("statement_calls_total", calls, labels, "counter", "Calls of one of the top statements"))
        out.append(Sample("statement_exec_seconds_total", total_ms / 1000, labels, "counter",
                          "Execution time of one of the top statements"))
    return out


def findings(target: str, data: dict, rates: dict, thresholds) -> list[Finding]:
    if not data.get("available"):
        return [statements_missing(target, data)]
    found = slow_statements(target, data, rates, thresholds)
    full = statements_full(target, data, rates, thresholds)
    return found + ([full] if full else [])


def statements_missing(target: str, data: dict) -> Finding:
    database = data.get("database", "this database")
    steps = []
    if not data.get("loaded"):
        steps.append("add it to shared_preload_libraries in postgresql.conf (shared_preload_libraries = "
                     "'pg_stat_statements', keeping any library already listed there) and restart the server")
    if not data.get("installed"):
        steps.append(f"run CREATE EXTENSION pg_stat_statements in database {database} "
                     "(as a superuser: pg_stat_statements is not a trusted extension)")
    return Finding(
        "pg_stat_statements_missing", "warning", target, "",
        f"no statement statistics: {data.get('reason', 'pg_stat_statements is not available')}",
        "Enable pg_stat_statements: " + "; then ".join(steps) + ". Until then no slow statements can be reported.",
        sql="CREATE EXTENSION IF NOT EXISTS pg_stat_statements")


def slow_statements(target: str, data: dict, rates: dict, thresholds) -> list[Finding]:
    worst: dict[int, tuple[float, Finding]] = {}   # one finding per queryid, whichever role ran it
    for st in data["top"]:
        seen = evidence(st, rates, thresholds.slow_statement_min_calls)
        if seen is None:
            continue
        mean, calls, span = seen
        if mean > thresholds.slow_statement_critical_ms:
            severity, limit = "critical", thresholds.slow_statement_critical_ms
        elif mean > thresholds.slow_statement_warning_ms:
            severity, limit = "warning", thresholds.slow_statement_warning_ms
        else:
            continue
        if st["queryid"] in worst and worst[st["queryid"]][0] >= mean:
            continue
        worst[st["queryid"]] = (mean, Finding(
            "slow_statement", severity, target, f"queryid {st['queryid']}",
            f"mean {mean:,.0f} ms over {_calls(calls)} {span} (threshold {limit:,.0f} ms; all-time mean "
            f"{st['mean_exec_ms'] or 0:,.0f} ms, max {st['max_exec_ms']:,.0f} ms, {_calls(st['calls'])}) "
            f"in database {data['database']}, role {st['role']}: {st['query']}",
            "Run EXPLAIN (ANALYZE, BUFFERS) on this statement with representative parameter values and "
            "look for sequential scans of large tables (a missing index), row estimates far from the "
            "actual rows (run ANALYZE, raise the statistics target), sorts or hashes spilling to disk "
            "(work_mem) and lock waits; if it is a batch job, schedule it outside peak hours."))
    return [finding for _, finding in worst.values()]


def _calls(n: int) -> str:
    return f"{n:,} call" + ("" if n == 1 else "s")


def statements_full(target: str, data: dict, rates: dict, thresholds) -> Finding | None:
    entries, limit = data["entries_server"], data.get("max")
    evicted = (rates or {}).get("dealloc_in_window") or 0
    nearly_full = limit is not None and entries >= thresholds.pg_stat_statements_full_ratio * limit
    if not nearly_full and not evicted:
        return None
    seen = []
    if limit is not None:
        seen.append(f"pg_stat_statements holds {entries:,} of {limit:,} entries ({entries / limit:.0%}; "
                    f"threshold {thresholds.pg_stat_statements_full_ratio:.0%})")
    if evicted:
        seen.append(f"it evicted statements {evicted:,} times since the previous snapshot")
    raise_to = max(2 * (limit or 5000), 10_000)
    return Finding(
        "pg_stat_statements_full", "warning", target, "pg_stat_statements.max",
        "; ".join(seen),
        "Statements are being evicted: their history is lost and the rarely run ones (often the slow "
        f"batch queries) never stay long enough to be seen. Raise pg_stat_statements.max (e.g. to "
        f"{raise_to:,}; it takes a restart) and look for statements that differ only by their "
        "literals or IN-list lengths, which fill the view with near-duplicates.",
        sql=f"ALTER SYSTEM SET pg_stat_statements.max = {raise_to}")


SECTION = Section(name="statements", collect=collect, rates=rates, samples=samples, findings=findings)
