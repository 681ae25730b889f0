"""The ``database`` section: the current database's counters (pg_stat_database), its size, the
checkpointer and background writer, and the markers that tell a reset from real activity.

Shape of the collected dict (counters are cumulative, as PostgreSQL reports them)::

    {
      "database": str,              # quote_ident(current_database()), ready for messages
      "datid": int,                 # a database dropped and created again under the same name is a reset
      "size_bytes": int,            # pg_database_size
      "shared_buffers_bytes": int,  # for the cache-hit recommendation
      "backends": int,              # numbackends
      "xact_commit", "xact_rollback", "blks_read", "blks_hit",
      "tup_returned", "tup_fetched", "tup_inserted", "tup_updated", "tup_deleted",
      "conflicts", "temp_files", "temp_bytes", "deadlocks": int,
      "stats_reset": str | None,    # ISO 8601 UTC; NULL until the database's counters are first reset
      "postmaster_start": str,      # ISO 8601 UTC; a server restart discards the counters
      "cache_hit_ratio": float | None,   # blks_hit / (blks_hit + blks_read) since stats_reset
      "checkpoints": {              # pg_stat_bgwriter up to 16, pg_stat_checkpointer from 17
        "source": "pg_stat_bgwriter" | "pg_stat_checkpointer",
        "timed": int, "requested": int, "buffers_written": int, "stats_reset": str | None},
      "bgwriter": {"buffers_clean": int, "buffers_backend": int | None,   # buffers_backend gone in 17
                   "stats_reset": str | None},
    }

Rates (``rates()``): ``seconds``, ``commits_per_second``, ``rollbacks_per_second``,
``blocks_read_per_second``, ``blocks_hit_per_second``, ``tuples_per_second`` ({returned, fetched,
inserted, updated, deleted}), ``temp_bytes_per_second``, ``temp_files_per_second``,
``deadlocks_in_window``, ``conflicts_in_window``, ``window_blocks`` (reads+hits in the window),
``window_cache_hit_ratio``, ``checkpoints_timed_in_window``, ``checkpoints_requested_in_window``,
``checkpoint_buffers_per_second``, ``bgwriter_buffers_clean_per_second``. Each is None across a
reset or a counter going backwards.
"""

from __future__ import annotations

from datetime import datetime, timezone

import psycopg
from psycopg.rows import dict_row

from dbops_pipelines.findings import Finding
from dbops_pipelines.stats.model import CollectEnv, Sample, Section
from dbops_pipelines.stats.rates import counter_rate, reset_between

DATABASE_QUERY = """
SELECT quote_ident(d.datname) AS database, d.oid::bigint AS datid,
       pg_database_size(d.oid) AS size_bytes,
       pg_size_bytes(current_setting('shared_buffers')) AS shared_buffers_bytes,
       s.numbackends AS backends, s.xact_commit, s.xact_rollback, s.blks_read, s.blks_hit,
       s.tup_returned, s.tup_fetched, s.tup_inserted, s.tup_updated, s.tup_deleted,
       s.conflicts, s.temp_files, s.temp_bytes, s.deadlocks,
       s.stats_reset, pg_postmaster_start_time() AS postmaster_start
FROM pg_database d JOIN pg_stat_database s ON s.datid = d.oid
WHERE d.datname = current_database()
"""

# Up to 16 the checkpointer's counters live in pg_stat_bgwriter; 17 moved them to pg_stat_checkpointer
# (and dropped buffers_backend, now in pg_stat_io).
CHECKPOINTS_QUERY_UNTIL_16 = """
SELECT 'pg_stat_bgwriter' AS source, checkpoints_timed AS timed, checkpoints_req AS requested,
       buffers_checkpoint AS buffers_written, stats_reset,
       buffers_clean, buffers_backend, stats_reset AS bgwriter_stats_reset
FROM pg_stat_bgwriter
"""
CHECKPOINTS_QUERY_FROM_17 = """
SELECT 'pg_stat_checkpointer' AS source, c.num_timed AS timed, c.num_requested AS requested,
       c.buffers_written, c.stats_reset,
       b.buffers_clean, NULL::bigint AS buffers_backend, b.stats_reset AS bgwriter_stats_reset
FROM pg_stat_checkpointer c CROSS JOIN pg_stat_bgwriter b
"""

COUNTERS = ("xact_commit", "xact_rollback", "blks_read", "blks_hit", "tup_returned", "tup_fetched",
            "tup_inserted", "tup_updated", "tup_deleted", "conflicts", "temp_files", "temp_bytes", "deadlocks")
TUPLE_KINDS = ("returned", "fetched", "inserted", "updated", "deleted")


def checkpoints_query(server_version_num: int) -> str:
    return CHECKPOINTS_QUERY_FROM_17 if server_version_num >= 170000 else CHECKPOINTS_QUERY_UNTIL_16


def iso_utc(value: datetime | None) -> str | None:
    """One spelling per instant, whatever the session's TimeZone: markers are compared as strings."""
    return value.astimezone(timezone.utc).isoformat() if value is not None else None


def hit_ratio(hits: float | None, reads: float | None) -> float | None:
    if hits is None or reads is None or hits + reads <= 0:
        return None
    return hits / (hits + reads)


def collect(conn: psycopg.Connection, env: CollectEnv) -> dict:
    cur = conn.cursor(row_factory=dict_row)
    row = cur.execute(DATABASE_QUERY).fetchone()
    data = {k: v for k, v in row.items() if k not in ("stats_reset", "postmaster_start")}   # bigints: ints
    data["stats_reset"] = iso_utc(row["stats_reset"])
    data["postmaster_start"] = iso_utc(row["postmaster_start"])
    data["cache_hit_ratio"] = hit_ratio(data["blks_hit"], data["blks_read"])
    cp = cur.execute(checkpoints_query(env.server_version_num)).fetchone()
    data["checkpoints"] = {"source": cp["source"], "timed": int(cp["timed"]), "requested": int(cp["requested"]),
                           "buffers_written": int(cp["buffers_written"]), "stats_reset": iso_utc(cp["stats_reset"])}
    data["bgwriter"] = {"buffers_clean": int(cp["buffers_clean"]),
                        "buffers_backend": None if cp["buffers_backend"] is None else int(cp["buffers_backend"]),
                        "stats_reset": iso_utc(cp["bgwriter_stats_reset"])}
    return data


def marker_changed(prev, cur) -> bool:
    """reset_between, plus NULL -> a time: pg_stat_database.stats_reset is NULL until the first
    reset of the database's counters, so that first reset shows only as the marker appearing."""
    return reset_between(prev, cur) or (prev is None and cur is not None)


def rates(prev: dict | None, cur: dict, seconds: float) -> dict:
    if prev is None:
        return {}
    restarted = reset_between(prev.get("postmaster_start"), cur.get("postmaster_start"))
    db_reset = (restarted or marker_changed(prev.get("stats_reset"), cur.get("stats_reset"))
                or reset_between(prev.get("datid"), cur.get("datid")))

    def rate(key: str) -> float | None:
        return counter_rate(prev.get(key), cur.get(key), seconds, db_reset)

    def delta(key: str) -> int | None:
        r = counter_rate(prev.get(key), cur.get(key), 1.0, db_reset)
        return None if r is None else int(r)

    out = {
        "seconds": seconds,
        "commits_per_second": rate("xact_commit"),
        "rollbacks_per_second": rate("xact_rollback"),
        "blocks_read_per_second": rate("blks_read"),
        "blocks_hit_per_second": rate("blks_hit"),
        "tuples_per_second": {kind: rate(f"tup_{kind}") for kind in TUPLE_KINDS},
        "temp_bytes_per_second": rate("temp_bytes"),
        "temp_files_per_second": rate("temp_files"),
        "deadlocks_in_window": delta("deadlocks"),
        "conflicts_in_window": delta("conflicts"),
    }
    reads, hits = delta("blks_read"), delta("blks_hit")
    out["window_blocks"] = None if reads is None or hits is None else reads + hits
    out["window_blocks_read"], out["window_blocks_hit"] = reads, hits
    out["window_cache_hit_ratio"] = hit_ratio(hits, reads)

    pcp, ccp = prev.get("checkpoints") or {}, cur.get("checkpoints") or {}
    cp_reset = (restarted or marker_changed(pcp.get("stats_reset"), ccp.get("stats_reset"))
                or pcp.get("source") != ccp.get("source"))   # a major upgrade in between
    out["checkpoints_timed_in_window"] = _int(counter_rate(pcp.get("timed"), ccp.get("timed"), 1.0, cp_reset))
    out["checkpoints_requested_in_window"] = _int(counter_rate(pcp.get("requested"), ccp.get("requested"), 1.0, cp_reset))
    out["checkpoint_buffers_per_second"] = counter_rate(pcp.get("buffers_written"), ccp.get("buffers_written"),
                                                        seconds, cp_reset)
    pbg, cbg = prev.get("bgwriter") or {}, cur.get("bgwriter") or {}
    bg_reset = restarted or marker_changed(pbg.get("stats_reset"), cbg.get("stats_reset"))
    out["bgwriter_buffers_clean_per_second"] = counter_rate(pbg.get("buffers_clean"), cbg.get("buffers_clean"),
                                                            seconds, bg_reset)
    return out


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def best_cache_hit_ratio(data: dict, rates: dict) -> float | None:
    """The window's ratio when it is known (it reflects now), else the one since stats_reset."""
    window = rates.get("window_cache_hit_ratio") if rates else None
    return window if window is not None else data.get("cache_hit_ratio")


def samples(data: dict, rates: dict) -> list[Sample]:
    out = [
        Sample("database_size_bytes", float(data["size_bytes"]), help="Size of the database (pg_database_size)"),
        Sample("backends", float(data["backends"]), help="Backends connected to the database"),
    ]
    counters = (
        ("xact_commit_total", "xact_commit", "Transactions committed"),
        ("xact_rollback_total", "xact_rollback", "Transactions rolled back"),
        ("blocks_read_total", "blks_read", "Blocks read from disk or the OS cache"),
        ("blocks_hit_total", "blks_hit", "Blocks found in shared_buffers"),
        ("deadlocks_total", "deadlocks", "Deadlocks detected"),
        ("temp_bytes_total", "temp_bytes", "Bytes written to temporary files"),
        ("temp_files_total", "temp_files", "Temporary files created"),
        ("conflicts_total", "conflicts", "Queries cancelled by recovery conflicts (standbys)"),
    )
    out += [Sample(name, float(data[key]), kind="counter", help=text) for name, key, text in counters]
    ratio = best_cache_hit_ratio(data, rates)
    if ratio is not None:
        out.append(Sample("cache_hit_ratio", ratio,
                          help="Share of block requests served by shared_buffers (since the previous snapshot when known)"))
    cp, bg = data.get("checkpoints") or {}, data.get("bgwriter") or {}
    if cp:
        out += [
            Sample("checkpoints_timed_total", float(cp["timed"]), kind="counter", help="Checkpoints started by checkpoint_timeout"),
            Sample("checkpoints_requested_total", float(cp["requested"]), kind="counter",
                   help="Checkpoints requested (max_wal_size reached, CHECKPOINT, ...)"),
            Sample("checkpoint_buffers_written_total", float(cp["buffers_written"]), kind="counter",
                   help="Buffers written by checkpoints"),
        ]
    if bg:
        out.append(Sample("bgwriter_buffers_clean_total", float(bg["buffers_clean"]), kind="counter",
                          help="Buffers written by the background writer"))
    per_second = (
        ("commits_per_second", "Transactions committed per second"),
        ("rollbacks_per_second", "Transactions rolled back per second"),
        ("blocks_read_per_second", "Blocks read from disk or the OS cache per second"),
        ("blocks_hit_per_second", "Blocks found in shared_buffers per second"),
        ("temp_bytes_per_second", "Bytes written to temporary files per second"),
    )
    out += [Sample(name, rates[name], help=text) for name, text in per_second if rates.get(name) is not None]
    for kind, value in (rates.get("tuples_per_second") or {}).items():
        if value is not None:
            out.append(Sample("tuples_per_second", value, labels=(("operation", kind),),
                              help="Rows returned, fetched, inserted, updated or deleted per second"))
    return out


def findings(target: str, data: dict, rates: dict, thresholds) -> list[Finding]:
    return [f for f in (cache_hit_low(target, data, rates, thresholds),) if f is not None]


def cache_hit_low(target: str, data: dict, rates: dict, thresholds) -> Finding | None:
    """Judged on the window since the previous snapshot when there is one; on the counters since
    stats_reset when there is none, or when a reset in between leaves the window unknown (those
    counters then cover only the time since the reset)."""
    if rates and rates.get("window_blocks") is not None:
        reads, hits = rates["window_blocks_read"], rates["window_blocks_hit"]
        span = f"over the last {rates['seconds']:.0f} s"
    else:
        reads, hits = data["blks_read"], data["blks_hit"]
        span = f"since {data['stats_reset']}" if data.get("stats_reset") else "since the statistics began"
    ratio = hit_ratio(hits, reads)
    if ratio is None or reads + hits < thresholds.cache_hit_min_blocks or ratio >= thresholds.cache_hit_low_ratio:
        return None
    return Finding(
        "cache_hit_low", "warning", target, "",
        f"database {data['database']}: cache hit ratio {ratio:.1%} {span} ({reads:,} blocks read outside "
        f"shared_buffers, {hits:,} hits; threshold {thresholds.cache_hit_low_ratio:.1%} from "
        f"{thresholds.cache_hit_min_blocks:,} blocks); shared_buffers is {_size(data.get('shared_buffers_bytes'))}, "
        f"the database {_size(data.get('size_bytes'))}",
        "The working set does not fit in shared_buffers. Compare shared_buffers with the size of the "
        "hot tables and indexes: raise shared_buffers (a restart; often about 25% of RAM) if the server "
        "has memory to spare, or make queries read less (missing indexes, sequential scans of large "
        "tables: see the statements and tables sections). Reads outside shared_buffers may still come "
        "from the OS cache, so check the disk's read rate before buying memory.")


def _size(n: int | None) -> str:
    if n is None:
        return "unknown"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


SECTION = Section(name="database", collect=collect, rates=rates, samples=samples, findings=findings)
