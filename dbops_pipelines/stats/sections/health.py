"""The ``health`` section: what can take a server down without a slow query to show for it.

Transaction-ID and multixact wraparound, replication (to standbys, and this server's own replay
when it is one), replication slots holding WAL, and the WAL archiver. Everything is readable by
``pg_monitor`` (pg_stat_replication's LSN columns need pg_read_all_stats, which it includes); the
work is bounded: pg_database, pg_stat_replication and pg_replication_slots are small, and each
list keeps the top N only.

The section's dict (ages in transactions, sizes in bytes, times in seconds; LSNs as text)::

    {
      "in_recovery": bool,
      "wal_lsn": "0/3000060" | None,   # pg_current_wal_lsn(); on a standby the received/replayed end
      "wraparound": {
        "autovacuum_freeze_max_age": int, "autovacuum_multixact_freeze_max_age": int,
        "database_count": int,
        "databases": [   # top N by the larger of the two ages
          {"name": str, "quoted": str (quote_ident), "xid_age": int, "mxid_age": int, "allow_connections": bool}],
      },
      "xmin_holders": {   # the oldest of each kind of thing that keeps VACUUM from freezing; None when there is none
        "session": {"pid": int, "age": int} | None,
        "prepared_xact": {"gid": str, "age": int} | None,
        "slot": {"name": str, "age": int} | None,
        "standby": {"application_name": str, "age": int} | None,   # hot_standby_feedback
      },
      "standby": None | {   # only on a server in recovery
        "receiver_status": "streaming" | ... | None,   # None: no WAL receiver (archive recovery, disconnected)
        "receive_lsn": str | None, "replay_lsn": str | None,
        "replay_lag_bytes": int | None,               # received, not yet replayed
        "last_replay_age_seconds": float | None,      # now() - pg_last_xact_replay_timestamp()
        "replay_lag_seconds": float | None,           # 0 when everything received is replayed
        "replay_paused": bool,
      },
      "replication": {
        "standby_count": int,
        "standbys": [   # top N by lag_bytes
          {"pid": int, "application_name": str, "client_addr": str | None, "state": str, "sync_state": str,
           "sent_lsn", "write_lsn", "flush_lsn", "replay_lsn": str | None,
           "lag_bytes": int | None,   # pg_wal_lsn_diff(wal_lsn, replay_lsn)
           "write_lag_seconds", "flush_lag_seconds", "replay_lag_seconds": float | None,
           "xmin_age": int | None}],
      },
      "slots": {
        "slot_count": int, "inactive_count": int,
        "slots": [   # top N by retained_wal_bytes
          {"name": str, "quoted": str, "slot_type": "physical" | "logical",
           "database": str | None, "database_quoted": str | None,   # logical slots only
           "temporary": bool, "active": bool, "restart_lsn": str | None,
           "retained_wal_bytes": int,   # pg_wal_lsn_diff(wal_lsn, restart_lsn); 0 without a restart_lsn
           "wal_status": str | None, "safe_wal_size": int | None, "xmin_age": int | None}],
      },
      "archiver": {
        "archive_mode": "on" | "off" | "always",
        "active": bool,   # whether this server archives at all (archive_mode=on only archives on a primary)
        "archived_count": int, "last_archived_wal": str | None, "last_archived_at": ISO str | None,
        "last_archived_age_seconds": float | None,
        "failed_count": int, "last_failed_wal": str | None, "last_failed_at": ISO str | None,
        "last_failed_age_seconds": float | None, "stats_reset": ISO str | None,
      },
    }

Rates: ``archived_per_second``, ``failed_per_second``, ``archived_in_window``, ``failed_in_window``
(None across a ``pg_stat_archiver`` reset or a counter going backwards).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from dbops_pipelines.findings import Finding
from dbops_pipelines.stats.model import CollectEnv, Sample, Section
from dbops_pipelines.stats.sections import quoted_name
from dbops_pipelines.stats.rates import counter_rate, reset_between

SAMPLE_TOP = 10   # labelled series per metric: a bounded set for Prometheus

# Where WAL is "now": on a primary the insert position; a standby cannot call pg_current_wal_lsn()
# (it raises), so there the end of what it has received or replayed stands in.
_WAL_POSITION = """
SELECT pg_is_in_recovery(),
       CASE WHEN pg_is_in_recovery()
            THEN GREATEST(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())
            ELSE pg_current_wal_lsn() END::text
"""

_DATABASES = """
SELECT datname, quote_ident(datname), age(datfrozenxid), mxid_age(datminmxid), datallowconn
FROM pg_database
ORDER BY GREATEST(age(datfrozenxid), mxid_age(datminmxid)) DESC, datname
LIMIT %s
"""

_FREEZE_SETTINGS = """
SELECT current_setting('autovacuum_freeze_max_age')::bigint,
       current_setting('autovacuum_multixact_freeze_max_age')::bigint,
       (SELECT count(*) FROM pg_database)
"""

# Each the oldest one only: enough to say who holds back freezing.
_OLDEST_SESSION = """
SELECT pid, GREATEST(age(backend_xid), age(backend_xmin))
FROM pg_stat_activity
WHERE pid <> pg_backend_pid() AND (backend_xid IS NOT NULL OR backend_xmin IS NOT NULL)
ORDER BY 2 DESC LIMIT 1
"""
_OLDEST_PREPARED = "SELECT gid, age(transaction) FROM pg_prepared_xacts ORDER BY 2 DESC LIMIT 1"
_OLDEST_SLOT_XMIN = """
SELECT slot_name, GREATEST(age(xmin), age(catalog_xmin))
FROM pg_replication_slots WHERE xmin IS NOT NULL OR catalog_xmin IS NOT NULL
ORDER BY 2 DESC LIMIT 1
"""
_OLDEST_STANDBY_XMIN = """
SELECT application_name, age(backend_xmin)
FROM pg_stat_replication WHERE backend_xmin IS NOT NULL
ORDER BY 2 DESC LIMIT 1
"""

_STANDBY = """
SELECT (SELECT status FROM pg_stat_wal_receiver),
       pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text,
       GREATEST(pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), 0)::bigint,
       extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8,
       pg_is_wal_replay_paused()
"""

_REPLICATION = """
SELECT pid, application_name, host(client_addr), state, sync_state,
       sent_lsn::text, write_lsn::text, flush_lsn::text, replay_lsn::text,
       GREATEST(pg_wal_lsn_diff(%(wal_lsn)s::pg_lsn, replay_lsn), 0)::bigint AS lag_bytes,
       extract(epoch FROM write_lag)::float8, extract(epoch FROM flush_lag)::float8,
       extract(epoch FROM replay_lag)::float8, age(backend_xmin)
FROM pg_stat_replication
ORDER BY lag_bytes DESC NULLS LAST, application_name, pid
LIMIT %(top_n)s
"""

_SLOTS = """
SELECT slot_name, quote_ident(slot_name), slot_type, database, quote_ident(database), temporary, active,
       restart_lsn::text,
       COALESCE(GREATEST(pg_wal_lsn_diff(%(wal_lsn)s::pg_lsn, restart_lsn), 0), 0)::bigint AS retained,
       {wal_status}, {safe_wal_size}, GREATEST(age(xmin), age(catalog_xmin))
FROM pg_replication_slots
ORDER BY retained DESC, slot_name
LIMIT %(top_n)s
"""

_SLOT_COUNTS = "SELECT count(*), count(*) FILTER (WHERE NOT active) FROM pg_replication_slots"

_ARCHIVER = """
SELECT current_setting('archive_mode'),
       archived_count, last_archived_wal, last_archived_time,
       extract(epoch FROM now() - last_archived_time)::float8,
       failed_count, last_failed_wal, last_failed_time,
       extract(epoch FROM now() - last_failed_time)::float8,
       stats_reset
FROM pg_stat_archiver
"""


# -- collect ----------------------------------------------------------------------------------

def collect(conn: psycopg.Connection, env: CollectEnv) -> dict:
    in_recovery, wal_lsn = conn.execute(_WAL_POSITION).fetchone()
    return {
        "in_recovery": bool(in_recovery),
        "wal_lsn": wal_lsn,
        "wraparound": _collect_wraparound(conn, env),
        "xmin_holders": _collect_xmin_holders(conn),
        "standby": _collect_standby(conn) if in_recovery else None,
        "replication": _collect_replication(conn, env, wal_lsn),
        "slots": _collect_slots(conn, env, wal_lsn),
        "archiver": _collect_archiver(conn, bool(in_recovery)),
    }


def _collect_wraparound(conn: psycopg.Connection, env: CollectEnv) -> dict:
    freeze_max, mxid_freeze_max, count = conn.execute(_FREEZE_SETTINGS).fetchone()
    rows = conn.execute(_DATABASES, (env.top_n,)).fetchall()
    return {
        "autovacuum_freeze_max_age": int(freeze_max),
        "autovacuum_multixact_freeze_max_age": int(mxid_freeze_max),
        "database_count": int(count),
        "databases": [{"name": name, "quoted": quoted, "xid_age": int(xid_age), "mxid_age": int(mxid_age),
                       "allow_connections": bool(allow)}
                      for name, quoted, xid_age, mxid_age, allow in rows],
    }


def _collect_xmin_holders(conn: psycopg.Connection) -> dict:
    def oldest(query: str, key: str, cast=str) -> dict | None:
        row = conn.execute(query).fetchone()
        return None if row is None or row[1] is None else {key: cast(row[0]), "age": int(row[1])}

    return {
        "session": oldest(_OLDEST_SESSION, "pid", int),
        "prepared_xact": oldest(_OLDEST_PREPARED, "gid"),
        "slot": oldest(_OLDEST_SLOT_XMIN, "name"),
        "standby": oldest(_OLDEST_STANDBY_XMIN, "application_name"),
    }


def _collect_standby(conn: psycopg.Connection) -> dict:
    status, receive_lsn, replay_lsn, lag_bytes, replay_age, paused = conn.execute(_STANDBY).fetchone()
    # An idle primary sends no commits, so the last replayed commit grows old on a standby that is
    # fully caught up: while it streams and has replayed all it received, it is not behind. (Not
    # streaming, what it received may be old: the age of the last replayed commit is all we know.)
    caught_up = status == "streaming" and lag_bytes == 0
    return {
        "receiver_status": status,
        "receive_lsn": receive_lsn, "replay_lsn": replay_lsn,
        "replay_lag_bytes": None if lag_bytes is None else int(lag_bytes),
        "last_replay_age_seconds": replay_age,
        "replay_lag_seconds": 0.0 if caught_up else replay_age,
        "replay_paused": bool(paused),
    }


def _collect_replication(conn: psycopg.Connection, env: CollectEnv, wal_lsn: str | None) -> dict:
    rows = conn.execute(_REPLICATION, {"wal_lsn": wal_lsn, "top_n": env.top_n}).fetchall()
    count = conn.execute("SELECT count(*) FROM pg_stat_replication").fetchone()[0]
    keys = ("pid", "application_name", "client_addr", "state", "sync_state", "sent_lsn", "write_lsn",
            "flush_lsn", "replay_lsn", "lag_bytes", "write_lag_seconds", "flush_lag_seconds",
            "replay_lag_seconds", "xmin_age")
    standbys = [dict(zip(keys, row)) for row in rows]
    for s in standbys:
        s["lag_bytes"] = None if s["lag_bytes"] is None else int(s["lag_bytes"])
        s["xmin_age"] = None if s["xmin_age"] is None else int(s["xmin_age"])
    return {"standby_count": int(count), "standbys": standbys}


def _collect_slots(conn: psycopg.Connection, env: CollectEnv, wal_lsn: str | None) -> dict:
    has_wal_status = env.server_version_num >= 130000   # wal_status, safe_wal_size came in 13
    query = sql.SQL(_SLOTS).format(
        wal_status=sql.SQL("wal_status" if has_wal_status else "NULL::text"),
        safe_wal_size=sql.SQL("safe_wal_size" if has_wal_status else "NULL::bigint"))
    rows = conn.execute(query, {"wal_lsn": wal_lsn, "top_n": env.top_n}).fetchall()
    count, inactive = conn.execute(_SLOT_COUNTS).fetchone()
    slots = [{"name": name, "quoted": quoted, "slot_type": slot_type,
              "database": database, "database_quoted": database_quoted,
              "temporary": bool(temporary), "active": bool(active), "restart_lsn": restart_lsn,
              "retained_wal_bytes": int(retained), "wal_status": wal_status,
              "safe_wal_size": None if safe_wal_size is None else int(safe_wal_size),
              "xmin_age": None if xmin_age is None else int(xmin_age)}
             for (name, quoted, slot_type, database, database_quoted, temporary, active, restart_lsn, retained,
                  wal_status, safe_wal_size, xmin_age) in rows]
    return {"slot_count": int(count), "inactive_count": int(inactive), "slots": slots}


def _collect_archiver(conn: psycopg.Connection, in_recovery: bool) -> dict:
    (mode, archived, last_archived_wal, last_archived_at, last_archived_age,
     failed, last_failed_wal, last_failed_at, last_failed_age, stats_reset) = conn.execute(_ARCHIVER).fetchone()
    return {
        "archive_mode": mode,
        # archive_mode=on archives only while the server is a primary; 'always' on a standby too.
        "active": mode == "always" or (mode == "on" and not in_recovery),
        "archived_count": int(archived), "last_archived_wal": last_archived_wal,
        "last_archived_at": _iso(last_archived_at), "last_archived_age_seconds": last_archived_age,
        "failed_count": int(failed), "last_failed_wal": last_failed_wal,
        "last_failed_at": _iso(last_failed_at), "last_failed_age_seconds": last_failed_age,
        "stats_reset": _iso(stats_reset),
    }


def _iso(value) -> str | None:
    return None if value is None else value.isoformat()


# -- rates --------------------------------------------------------------------------------------

def rates(prev: dict | None, cur: dict, seconds: float) -> dict:
    if prev is None:
        return {}
    before, now = prev.get("archiver") or {}, cur.get("archiver") or {}
    reset = reset_between(before.get("stats_reset"), now.get("stats_reset"))
    out: dict[str, Any] = {}
    for counter, name in (("archived_count", "archived"), ("failed_count", "failed")):
        per_second = counter_rate(before.get(counter), now.get(counter), seconds, reset)
        out[f"{name}_per_second"] = per_second
        out[f"{name}_in_window"] = None if per_second is None else now[counter] - before[counter]
    return out


# -- samples ------------------------------------------------------------------------------------

def samples(data: dict, rates: dict) -> list[Sample]:
    out = _wraparound_samples(data["wraparound"])
    out.append(Sample("in_recovery", 1.0 if data["in_recovery"] else 0.0,
                      help="1 when this server is a standby (in recovery)"))
    out += _replication_samples(data["replication"])
    out += [Sample("slot_retained_wal_bytes", float(s["retained_wal_bytes"]), (("slot", s["name"]),),
                   help="WAL kept on disk for a replication slot (top 10 slots)")
            for s in data["slots"]["slots"][:SAMPLE_TOP]]
    out += _archiver_samples(data["archiver"])
    standby = data.get("standby")
    if standby and standby["replay_lag_seconds"] is not None:
        out.append(Sample("standby_replay_lag_seconds", float(standby["replay_lag_seconds"]),
                          help="How far this standby's replay is behind (0 when all received WAL is replayed)"))
    if standby and standby["replay_lag_bytes"] is not None:
        out.append(Sample("standby_replay_lag_bytes", float(standby["replay_lag_bytes"]),
                          help="WAL this standby received but has not replayed yet"))
    return out


def _wraparound_samples(wrap: dict) -> list[Sample]:
    databases = sorted(wrap["databases"], key=lambda d: (-d["xid_age"], d["name"]))
    out = [Sample("xid_age", float(d["xid_age"]), (("database", d["name"]),),
                  help="Transaction-ID age of the database's oldest unfrozen row (top 10 databases)")
           for d in databases[:SAMPLE_TOP]]
    if databases:
        out.append(Sample("xid_age_max", float(databases[0]["xid_age"]),
                          help="Largest transaction-ID age of any database (wraparound at about 2.1 billion)"))
        out.append(Sample("mxid_age_max", float(max(d["mxid_age"] for d in databases)),
                          help="Largest multixact-ID age of any database"))
    return out


def _replication_samples(replication: dict) -> list[Sample]:
    standbys = _one_per_application(replication["standbys"])
    out = [Sample("replication_standbys", float(replication["standby_count"]),
                  help="WAL senders on this server (standbys, pg_basebackup, logical subscribers)")]
    for s in standbys[:SAMPLE_TOP]:
        label = (("application", s["application_name"]),)
        if s["lag_bytes"] is not None:
            out.append(Sample("replication_lag_bytes", float(s["lag_bytes"]), label,
                              help="WAL a standby has not replayed yet (top 10 standbys)"))
        if s["replay_lag_seconds"] is not None:
            out.append(Sample("replication_lag_seconds", float(s["replay_lag_seconds"]), label,
                              help="A standby's replay lag as measured by the primary (top 10 standbys)"))
    lags = [s["lag_bytes"] for s in standbys if s["lag_bytes"] is not None]
    if lags:
        out.append(Sample("replication_lag_bytes_max", float(max(lags)),
                          help="The largest replay lag of any standby, in bytes"))
    return out


def _archiver_samples(archiver: dict) -> list[Sample]:
    out = [Sample("archiver_archived_total", float(archiver["archived_count"]), kind="counter",
                  help="WAL files archived since the archiver's stats were reset"),
           Sample("archiver_failed_total", float(archiver["failed_count"]), kind="counter",
                  help="Failed attempts to archive a WAL file")]
    if archiver["last_archived_age_seconds"] is not None:
        out.append(Sample("archiver_last_archived_age_seconds", float(archiver["last_archived_age_seconds"]),
                          help="Seconds since a WAL file was last archived"))
    return out


def _one_per_application(standbys: list[dict]) -> list[dict]:
    """Standbys may share an application_name (the default is "walreceiver"): keep the one lagging
    most (the list is ordered by lag) so a label or a finding's object names one series."""
    seen: dict[str, dict] = {}
    for s in standbys:
        seen.setdefault(s["application_name"], s)
    return list(seen.values())


# -- findings -----------------------------------------------------------------------------------

def findings(target: str, data: dict, rates: dict, thresholds) -> list[Finding]:
    return [*_wraparound_findings(target, data, thresholds),
            *_replication_findings(target, data, thresholds),
            *_standby_findings(target, data, thresholds),
            *_slot_findings(target, data, thresholds),
            *_archiver_findings(target, data, rates)]


def _wraparound_findings(target: str, data: dict, th) -> list[Finding]:
    warn, crit = th.wraparound_warning_age, th.wraparound_critical_age
    if warn is None and crit is None:
        return []
    wrap = data["wraparound"]
    holders = _xmin_holders_text(data.get("xmin_holders") or {})
    out = []
    for db in wrap["databases"]:
        age = max(db["xid_age"], db["mxid_age"])
        if crit is not None and age > crit:
            severity, limit = "critical", crit
        elif warn is not None and age > warn:
            severity, limit = "warning", warn
        else:
            continue
        where = (f"connect to {db['quoted']} and run VACUUM (FREEZE)" if db["allow_connections"] else
                 f"{db['quoted']} does not allow connections, so only autovacuum can freeze it; check that "
                 "autovacuum is on and not cancelled")
        out.append(Finding(
            "wraparound", severity, target, db["quoted"],
            f"database {db['quoted']}: transaction-ID age {db['xid_age']:,}, multixact age {db['mxid_age']:,} "
            f"(threshold {limit:,}; autovacuum_freeze_max_age {wrap['autovacuum_freeze_max_age']:,}; "
            f"the server stops assigning transaction IDs at about 2.1 billion){holders}",
            f"Freeze the oldest rows before the server refuses writes: {where}, starting with the tables "
            "of the oldest relfrozenxid (SELECT oid::regclass, age(relfrozenxid) FROM pg_class WHERE "
            "relkind IN ('r', 'm', 't') ORDER BY 2 DESC LIMIT 20). VACUUM cannot freeze past the oldest "
            "snapshot: end long-running transactions (pg_stat_activity.backend_xmin), commit or roll back "
            "old prepared transactions (pg_prepared_xacts), drop unused replication slots holding xmin "
            "(pg_replication_slots) and check standbys with hot_standby_feedback.",
            "VACUUM (FREEZE)" if db["allow_connections"] else None))
    return out


def _xmin_holders_text(holders: dict) -> str:
    parts = []
    if holders.get("session"):
        parts.append(f"session pid {holders['session']['pid']} (age {holders['session']['age']:,})")
    if holders.get("prepared_xact"):
        gid = sql.Literal(holders["prepared_xact"]["gid"]).as_string(None)
        parts.append(f"prepared transaction {gid} (age {holders['prepared_xact']['age']:,})")
    if holders.get("slot"):
        parts.append(f"slot {quoted_name(holders['slot']['name'])} (age {holders['slot']['age']:,})")
    if holders.get("standby"):
        parts.append(f"standby {quoted_name(holders['standby']['application_name'])} "
                     f"(age {holders['standby']['age']:,})")
    return f"; oldest xmin holders: {', '.join(parts)}" if parts else ""


def _replication_findings(target: str, data: dict, th) -> list[Finding]:
    standbys = data["replication"]["standbys"]
    out = []
    for s in _one_per_application(standbys):
        too_far = _over(s["lag_bytes"], th.replication_lag_bytes)
        too_late = _over(s["replay_lag_seconds"], th.replication_lag_seconds)
        if not (too_far or too_late):
            continue
        name = quoted_name(s["application_name"])
        sharing = sum(1 for o in standbys if o["application_name"] == s["application_name"])
        also = f" ({sharing} standbys share this application_name; the worst is shown)" if sharing > 1 else ""
        out.append(Finding(
            "replication_lag", "warning", target, f"standby {name}",
            f"standby {name} ({s['client_addr'] or 'local socket'}, {s['state']}, {s['sync_state']}) has "
            f"{_bytes(s['lag_bytes'])} of WAL not replayed, replay lag {_seconds(s['replay_lag_seconds'])} "
            f"(thresholds {_bytes(th.replication_lag_bytes)}, {_seconds(th.replication_lag_seconds)}){also}",
            "Compare sent, write, flush and replay positions: sent far ahead of flush points at the network "
            "or the standby's disk; flush far ahead of replay at the standby's replay (paused, I/O bound, or "
            "waiting for queries that conflict, see max_standby_streaming_delay). A standby that falls too "
            "far behind needs the WAL kept (a slot or wal_keep_size) or it must be rebuilt."))
    return out


def _standby_findings(target: str, data: dict, th) -> list[Finding]:
    standby = data.get("standby")
    if not standby:
        return []
    too_far = _over(standby["replay_lag_bytes"], th.replication_lag_bytes)
    too_late = _over(standby["replay_lag_seconds"], th.replication_lag_seconds)
    if not (too_far or too_late):
        return []
    paused = standby["replay_paused"]
    return [Finding(
        "replication_lag", "warning", target, "",
        f"this server is a standby {_seconds(standby['replay_lag_seconds'])} behind, with "
        f"{_bytes(standby['replay_lag_bytes'])} received but not replayed"
        f"{' (replay is paused)' if paused else ''}; WAL receiver: {standby['receiver_status'] or 'not running'} "
        f"(thresholds {_bytes(th.replication_lag_bytes)}, {_seconds(th.replication_lag_seconds)})",
        "Replay was paused by pg_wal_replay_pause(): resume it unless someone paused it on purpose."
        if paused else
        "Check the standby's disk and CPU, queries that conflict with replay (max_standby_streaming_delay, "
        "pg_stat_database_conflicts) and, when the receiver is not streaming, its connection to the primary "
        "(primary_conninfo, the server log).",
        "SELECT pg_wal_replay_resume()" if paused else None)]


def _slot_findings(target: str, data: dict, th) -> list[Finding]:
    limit = th.slot_retained_wal_bytes
    out = []
    for slot in data["slots"]["slots"]:
        if slot["active"]:
            continue   # a connected consumer that lags shows as replication lag
        lost = slot["wal_status"] == "lost"
        if not (lost or _over(slot["retained_wal_bytes"], limit)):
            continue
        critical = slot["wal_status"] in ("unreserved", "lost")
        state = {"lost": "; its WAL is already removed, so its consumer can no longer resume from it",
                 "unreserved": "; max_slot_wal_keep_size is about to remove WAL it needs"}.get(slot["wal_status"], "")
        in_db = f" in database {slot['database_quoted']}" if slot["database"] else ""
        out.append(Finding(
            "slot_retained_wal", "critical" if critical else "warning", target, slot["quoted"],
            f"inactive {slot['slot_type']} replication slot {slot['quoted']}{in_db} retains "
            f"{_bytes(slot['retained_wal_bytes'])} of WAL (threshold {_bytes(limit)}; wal_status "
            f"{slot['wal_status'] or 'unknown'}){state}",
            "An inactive slot keeps every WAL file since its consumer left, until pg_wal fills the disk. "
            "Find its consumer first (a standby or a logical subscriber that is down or was removed): "
            "restart it if it is still needed, otherwise drop the slot"
            + (f" (connected to {slot['database_quoted']}, as a logical slot must be)" if slot["database"] else "")
            + ". Setting max_slot_wal_keep_size bounds what any slot can hold.",
            f"SELECT pg_drop_replication_slot({sql.Literal(slot['name']).as_string(None)})"))
    return out


def _archiver_findings(target: str, data: dict, rates: dict) -> list[Finding]:
    arch = data["archiver"]
    if not arch["active"]:
        return []
    failed_age, archived_age = arch["last_failed_age_seconds"], arch["last_archived_age_seconds"]
    # The latest attempt failed when the last failure is newer than the last success.
    failing_now = failed_age is not None and (archived_age is None or failed_age < archived_age)
    failed_in_window = rates.get("failed_in_window") or 0
    if not failing_now and failed_in_window <= 0:
        return []
    last = (f"last failed WAL file {arch['last_failed_wal']} {_seconds(failed_age)} ago; last archived "
            f"{arch['last_archived_wal'] or 'none'}"
            + (f" {_seconds(archived_age)} ago" if archived_age is not None else ""))
    if failing_now:
        return [Finding(
            "archiver_failing", "critical", target, "",
            f"archive_command is failing: {arch['failed_count']:,} failures since the stats reset"
            + (f" ({failed_in_window:,} in this window)" if failed_in_window else "") + f"; {last}",
            "Read the server log for archive_command's error (permissions, a full or unreachable archive, a "
            "file that already exists) and fix it; the archiver retries by itself. Until then no WAL file "
            "is removed: pg_wal grows until the disk is full and the server stops, and point-in-time "
            "recovery has a gap.")]
    return [Finding(
        "archiver_failing", "warning", target, "",
        f"archive_command failed {failed_in_window:,} times in this window, but the latest attempt "
        f"succeeded; {last}",
        "Read the server log for archive_command's error: intermittent failures (a flaky network share, "
        "a slow object store) delay archiving and let pg_wal grow.")]


# -- formatting -----------------------------------------------------------------------------------

def _over(value, limit) -> bool:
    return value is not None and limit is not None and value > limit


def _bytes(n) -> str:
    if n is None:
        return "unknown"
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def _seconds(s) -> str:
    return "unknown" if s is None else f"{s:,.1f} s"


SECTION = Section("health", collect, rates, samples, findings)
