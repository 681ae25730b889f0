"""The ``activity`` section: who is connected and what they are doing, server-wide.

Read from pg_stat_activity (client backends only, never the snapshot's own session) and pg_locks.
Every list is capped at ``top_n``; the lists of long-running queries and idle transactions start at
the target's thresholds so a busy server does not fill the snapshot with healthy sessions, while
``findings`` still judges against the thresholds it is handed.

Shape of the dict::

    {
      "max_connections": 100, "superuser_reserved_connections": 3,
      "connections_total": 12,                       # client backends, all databases
      "by_state": {"active": 2, "idle": 9, "idle in transaction": 1},   # null state -> "unknown"
      "by_application": {"api": 8, "psql": 1, "other": 3},   # top 20 application_name, rest "other"
      "by_wait_event": {"Lock:transactionid": 1},    # top 20 type:event of sessions not idle
      "longest_query_seconds": 75.2,                  # 0.0 when nothing runs
      "longest_idle_in_transaction_seconds": 0.0,
      "longest_lock_wait_seconds": 12.0,
      "waiting_sessions": 1,                          # wait_event_type = 'Lock'
      "long_running_queries": [{"pid", "user", "database", "application", "age_seconds", "query"}],
      "idle_in_transaction": [{"pid", "user", "database", "application", "age_seconds",
                               "transaction_age_seconds", "query"}],   # query: the last one it ran
      "lock_waits": [{"pid", "user", "database", "application", "wait_seconds", "query",
                      "blocker_count", "blockers": [{"pid", "user", "application", "state",
                      "waiting": bool, "age_seconds", "query"}]}],
      "collected_with": {"long_running_query_seconds": 60, "idle_in_transaction_seconds": 60},
    }

Ages are seconds; queries are whitespace-collapsed and cut to 300 characters. Rates: {} (there are
no counters here).
"""

from __future__ import annotations


import psycopg

from dbops_pipelines.config import STATS_THRESHOLD_DEFAULTS
from dbops_pipelines.findings import Finding
from dbops_pipelines.stats.sections import query_excerpt, quoted_name
from dbops_pipelines.stats.model import CollectEnv, Sample, Section

TOP_GROUPS = 20            # applications and wait events listed by name
BLOCKERS_PER_WAIT = 10     # a lock queue can be long; the first blockers are enough to act on
CRITICAL_CONNECTIONS_RATIO = 0.95
# pg_stat_activity.state's values: a fixed set, so a label Prometheus can carry.
STATES = ("active", "idle", "idle in transaction", "idle in transaction (aborted)",
          "fastpath function call", "disabled", "unknown")
IDLE_IN_TRANSACTION = "('idle in transaction', 'idle in transaction (aborted)')"   # as SQL


def _client_filter(env: CollectEnv) -> str:
    # backend_type exists since 10; without it walsenders and background workers would count.
    base = "a.pid <> pg_backend_pid()"
    return base + " AND a.backend_type = 'client backend'" if env.server_version_num >= 100000 else base


def _age(expr: str) -> str:
    # Another session's timestamps may be newer than our transaction's now(): never a negative age.
    return f"greatest(0, extract(epoch FROM now() - {expr}))::float8"


def _top_groups(counts: list[tuple[str, int]]) -> dict[str, int]:
    ranked = sorted(counts, key=lambda kv: (-kv[1], kv[0]))
    top = dict(ranked[:TOP_GROUPS])
    rest = sum(n for _, n in ranked[TOP_GROUPS:])
    if rest:
        top["other"] = top.get("other", 0) + rest
    return top


def _collect_thresholds(env: CollectEnv):
    settings_th = getattr(env.settings, "thresholds", None)
    return settings_th if settings_th is not None else STATS_THRESHOLD_DEFAULTS


def collect(conn: psycopg.Connection, env: CollectEnv) -> dict:
    th = _collect_thresholds(env)
    clients = _client_filter(env)
    n = env.top_n
    max_conn, reserved = conn.execute(
        "SELECT current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int"
    ).fetchone()
    groups = conn.execute(f"""
        SELECT 'state', coalesce(a.state, 'unknown'), count(*) FROM pg_stat_activity a WHERE {clients} GROUP BY 2
        UNION ALL
        SELECT 'app', a.application_name, count(*) FROM pg_stat_activity a WHERE {clients} GROUP BY 2
        UNION ALL
        SELECT 'wait', a.wait_event_type || ':' || a.wait_event, count(*) FROM pg_stat_activity a
         WHERE {clients} AND a.wait_event IS NOT NULL AND a.state IS DISTINCT FROM 'idle' GROUP BY 2
    """).fetchall()
    longest_query, longest_idle_tx, waiting = conn.execute(f"""
        SELECT coalesce(max({_age('a.query_start')}) FILTER (WHERE a.state = 'active'), 0),
               coalesce(max({_age('a.state_change')}) FILTER (WHERE a.state IN {IDLE_IN_TRANSACTION}), 0),
               count(*) FILTER (WHERE a.wait_event_type = 'Lock')
          FROM pg_stat_activity a WHERE {clients}
    """).fetchone()
    long_running = conn.execute(f"""
        SELECT a.pid, a.usename, a.datname, a.application_name, {_age('a.query_start')}, left(a.query, 2000)
          FROM pg_stat_activity a
         WHERE {clients} AND a.state = 'active' AND a.query_start < now() - make_interval(secs => %s)
           AND a.wait_event_type IS DISTINCT FROM 'Lock'     -- a lock wait is reported as such, with its blocker
         ORDER BY a.query_start LIMIT %s
    """, (th.long_running_query_seconds, n)).fetchall()
    idle_tx = conn.execute(f"""
        SELECT a.pid, a.usename, a.datname, a.application_name, {_age('a.state_change')},
               {_age('a.xact_start')}, left(a.query, 2000)
          FROM pg_stat_activity a
         WHERE {clients} AND a.state IN {IDLE_IN_TRANSACTION}
           AND a.state_change < now() - make_interval(secs => %s)
         ORDER BY a.state_change LIMIT %s
    """, (th.idle_in_transaction_seconds, n)).fetchall()
    return {
        "max_connections": max_conn,
        "superuser_reserved_connections": reserved,
        "connections_total": sum(c for kind, _, c in groups if kind == "state"),
        "by_state": {name: c for kind, name, c in groups if kind == "state"},
        "by_application": _top_groups([(name, c) for kind, name, c in groups if kind == "app"]),
        "by_wait_event": _top_groups([(name, c) for kind, name, c in groups if kind == "wait"]),
        "longest_query_seconds": float(longest_query),
        "longest_idle_in_transaction_seconds": float(longest_idle_tx),
        "waiting_sessions": waiting,
        "long_running_queries": [
            {"pid": pid, "user": user, "database": db, "application": app, "age_seconds": age, "query": query_excerpt(q)}
            for pid, user, db, app, age, q in long_running],
        "idle_in_transaction": [
            {"pid": pid, "user": user, "database": db, "application": app, "age_seconds": age,
             "transaction_age_seconds": xact_age, "query": query_excerpt(q)}
            for pid, user, db, app, age, xact_age, q in idle_tx],
        **_lock_waits(conn, env, clients),
        "collected_with": {"long_running_query_seconds": th.long_running_query_seconds,
                           "idle_in_transaction_seconds": th.idle_in_transaction_seconds},
    }


def _lock_waits(conn: psycopg.Connection, env: CollectEnv, clients: str) -> dict:
    """The top N sessions waiting for a lock, oldest wait first, each with who blocks it."""
    # pg_locks.waitstart (14+) is when the wait began; before 14 the statement's start is the best guess.
    if env.server_version_num >= 140000:
        started = "coalesce(w.waitstart, a.state_change)"
        waits = ("LEFT JOIN (SELECT pid, min(waitstart) AS waitstart FROM pg_locks WHERE NOT granted GROUP BY pid) w "
                 "ON w.pid = a.pid")
    else:
        started, waits = "a.state_change", ""
    rows = conn.execute(f"""
        WITH waiting AS (
            SELECT a.pid, a.usename, a.datname, a.application_name, {_age(started)} AS wait_seconds,
                   left(a.query, 2000) AS query
              FROM pg_stat_activity a {waits}
             WHERE {clients} AND a.wait_event_type = 'Lock'
             ORDER BY wait_seconds DESC LIMIT %s
        )
        SELECT w.pid, w.usename, w.datname, w.application_name, w.wait_seconds, w.query,
               bp.pid, b.usename, b.application_name, b.state, b.wait_event_type = 'Lock',
               {_age('coalesce(b.xact_start, b.query_start)')}, left(b.query, 2000),
               count(bp.pid) OVER (PARTITION BY w.pid)
          FROM waiting w
          LEFT JOIN LATERAL (SELECT DISTINCT unnest(pg_blocking_pids(w.pid)) AS pid) bp ON true
          LEFT JOIN pg_stat_activity b ON b.pid = bp.pid
         ORDER BY w.wait_seconds DESC, w.pid, b.xact_start NULLS LAST, bp.pid
    """, (env.top_n,)).fetchall()
    waits_by_pid: dict[int, dict] = {}
    for (pid, user, db, app, wait_s, query, b_pid, b_user, b_app, b_state, b_waiting, b_age, b_query,
         blocker_count) in rows:
        entry = waits_by_pid.setdefault(pid, {
            "pid": pid, "user": user, "database": db, "application": app, "wait_seconds": wait_s,
            "query": query_excerpt(query), "blocker_count": blocker_count, "blockers": []})
        if b_pid is not None and len(entry["blockers"]) < BLOCKERS_PER_WAIT:
            entry["blockers"].append({"pid": b_pid, "user": b_user, "application": b_app, "state": b_state,
                                      "waiting": bool(b_waiting), "age_seconds": b_age, "query": query_excerpt(b_query)})
    lock_waits = list(waits_by_pid.values())
    return {"lock_waits": lock_waits,
            "longest_lock_wait_seconds": max((w["wait_seconds"] for w in lock_waits), default=0.0)}


def rates(prev_data: dict | None, cur_data: dict, seconds: float) -> dict:
    return {}   # gauges only: sessions come and go, nothing here counts up


def samples(data: dict, rates: dict) -> list[Sample]:
    by_state = {state: 0 for state in STATES}
    for state, count in data.get("by_state", {}).items():
        key = state if state in by_state else "unknown"
        by_state[key] += count
    out = [Sample("connections", float(count), (("state", state),),
                  help="Client connections by pg_stat_activity.state (all databases)")
           for state, count in by_state.items()]
    out += [
        # Not "connections_total": Prometheus reserves _total for counters (promtool rejects a gauge so named).
        Sample("client_connections", float(data["connections_total"]), help="Client connections, all states"),
        Sample("max_connections", float(data["max_connections"]), help="The server's max_connections"),
        Sample("waiting_sessions", float(data["waiting_sessions"]), help="Sessions waiting for a lock"),
        Sample("longest_query_seconds", float(data["longest_query_seconds"]),
               help="Age of the oldest running statement"),
        Sample("longest_idle_in_transaction_seconds", float(data["longest_idle_in_transaction_seconds"]),
               help="How long the longest idle-in-transaction session has been idle"),
        Sample("longest_lock_wait_seconds", float(data["longest_lock_wait_seconds"]),
               help="How long the longest lock wait has lasted"),
    ]
    return out


def _who(s: dict) -> str:
    where = f"database {quoted_name(s['database'])}, " if "database" in s else ""
    return f"{where}user {quoted_name(s['user'])}, application {s['application']!r}"


def _cancel_sql(blockers: list[dict]) -> str:
    # An idle transaction runs nothing to cancel: only ending its session releases its locks.
    fn = "pg_terminate_backend" if any((b["state"] or "").startswith("idle") for b in blockers) else "pg_cancel_backend"
    if len(blockers) == 1:
        return f"SELECT {fn}({int(blockers[0]['pid'])})"
    pids = ", ".join(str(int(b["pid"])) for b in blockers)
    return f"SELECT {fn}(pid) FROM unnest(ARRAY[{pids}]) AS pid"


def findings(target: str, data: dict, rates: dict, thresholds) -> list[Finding]:
    out: list[Finding] = []
    th = thresholds
    for q in data.get("long_running_queries", []):
        if q["age_seconds"] > th.long_running_query_seconds:
            out.append(Finding(
                "long_running_query", "warning", target, f"pid {q['pid']}",
                f"a query has been running for {q['age_seconds']:.0f} s (threshold {th.long_running_query_seconds:g} s) "
                f"in {_who(q)}: {q['query']}",
                "Find out why it runs so long (EXPLAIN it, look for a lock wait or a missing index) and whether it "
                "should; cancel it if it is stuck or harmful, and set statement_timeout for that role or application.",
                f"SELECT pg_cancel_backend({int(q['pid'])})"))
    for s in data.get("idle_in_transaction", []):
        if s["age_seconds"] > th.idle_in_transaction_seconds:
            out.append(Finding(
                "idle_in_transaction", "warning", target, f"pid {s['pid']}",
                f"a session has been idle in a transaction for {s['age_seconds']:.0f} s "
                f"(threshold {th.idle_in_transaction_seconds:g} s; transaction open {s['transaction_age_seconds']:.0f} s) "
                f"in {_who(s)}; its last query: {s['query']}",
                "An open transaction holds its locks and stops VACUUM from removing dead rows. Fix the application so "
                "it commits or rolls back promptly, and set idle_in_transaction_session_timeout (for the role or the "
                "database) so such sessions are ended; end this one if it is abandoned.",
                f"SELECT pg_terminate_backend({int(s['pid'])})"))
    # One finding per blocker, not per waiting session: a migration that blocks a busy API is one
    # problem (and one alert), however many sessions queue behind it.
    by_blockers: dict[tuple, list[dict]] = {}
    for w in data.get("lock_waits", []):
        if w["wait_seconds"] > th.lock_wait_seconds:
            by_blockers.setdefault(tuple(b["pid"] for b in _roots(w)), []).append(w)
    out += [_lock_wait_finding(target, waits, th) for waits in by_blockers.values()]
    out += _connections_high(target, data, th)
    return out


def _describe_blocker(b: dict) -> str:
    if b["pid"] == 0:   # pg_blocking_pids() reports a prepared transaction as pid 0
        return "a prepared transaction (see pg_prepared_xacts)"
    return (f"pid {b['pid']} ({b['state'] or 'state unknown'}, user {quoted_name(b['user'])}, "
            f"application {b['application']!r}, open {b['age_seconds']:.0f} s, query: {b['query']})")


def _roots(w: dict) -> list[dict]:
    # The sessions that hold the lock and wait for nothing themselves are the ones to act on.
    return [b for b in w["blockers"] if not b["waiting"]] or w["blockers"]


def _lock_wait_finding(target: str, waits: list[dict], th) -> Finding:
    longest = max(waits, key=lambda w: w["wait_seconds"])
    roots = _roots(longest)
    if roots:
        blocked_by = "; ".join(_describe_blocker(b) for b in roots)
        if longest["blocker_count"] > len(roots):
            blocked_by += f" (and {longest['blocker_count'] - len(roots)} more sessions ahead of the longest waiter)"
        obj = ", ".join("prepared transaction" if b["pid"] == 0 else f"pid {b['pid']}" for b in roots)
    else:
        blocked_by, obj = "a session that has already gone", f"pid {longest['pid']}"
    others = (f"; {len(waits) - 1} more session(s) wait behind it too: pids "
              + ", ".join(str(w["pid"]) for w in waits if w is not longest)) if len(waits) > 1 else ""
    cancellable = [b for b in roots if b["pid"] != 0]
    return Finding(
        "lock_wait", "warning", target, f"blocker {obj}",
        f"{len(waits)} session(s) waiting for a lock held by {blocked_by}; the longest, pid {longest['pid']}, has "
        f"waited {longest['wait_seconds']:.0f} s (threshold {th.lock_wait_seconds:g} s) in {_who(longest)}: "
        f"{longest['query']}{others}",
        "Find out why the blocking session holds its lock so long (a long transaction, an idle-in-transaction "
        "session, a migration); cancel its query (or end its session when it is idle in a transaction) if that is "
        "safe, and set lock_timeout for migrations so they give up instead of queueing everyone behind them. A "
        "prepared transaction is finished with COMMIT PREPARED or ROLLBACK PREPARED.",
        _cancel_sql(cancellable) if cancellable else None)


def _connections_high(target: str, data: dict, th) -> list[Finding]:
    total, max_conn = data["connections_total"], data["max_connections"]
    over_ratio = th.connections_high_ratio is not None and total > th.connections_high_ratio * max_conn
    over_count = th.connections_high_count is not None and total > th.connections_high_count
    if not (over_ratio or over_count):
        return []
    limits = []
    if th.connections_high_ratio is not None:
        limits.append(f"{th.connections_high_ratio:.0%} of max_connections")
    if th.connections_high_count is not None:
        limits.append(f"{th.connections_high_count} connections")
    apps = ", ".join(f"{app!r}: {n}" for app, n in list(data.get("by_application", {}).items())[:5])
    states = ", ".join(f"{state}: {n}" for state, n in sorted(data.get("by_state", {}).items()))
    severity = "critical" if total > CRITICAL_CONNECTIONS_RATIO * max_conn else "warning"
    return [Finding(
        "connections_high", severity, target, "",
        f"{total} client connections of max_connections {max_conn} "
        f"({data.get('superuser_reserved_connections', 0)} reserved for superusers; threshold {' or '.join(limits)}); "
        f"by state: {states}; top applications: {apps}",
        "Put a connection pooler (PgBouncer) in front of the applications, and look at the applications with the "
        "most connections (by_application) for one that leaks them or keeps many idle; raising max_connections "
        "costs memory per connection and is the last resort.")]


SECTION = Section(name="activity", collect=collect, rates=rates, samples=samples, findings=findings)
