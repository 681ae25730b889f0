"""The ``tables`` section: tables and indexes of the snapshot's database, bounded on huge catalogs.

Cheap first, exact later: candidates are ranked from pg_class.relpages estimates and the
statistics views (one pass over the catalog, no per-relation function), and only the few tables and
indexes that make a top-N list get exact sizes. Size functions take an ACCESS SHARE lock, so a
relation someone holds (or awaits) an ACCESS EXCLUSIVE lock on keeps its estimate instead of making
the snapshot queue behind a migration (``size_estimated``: true).

Names are quoted by the server (quote_ident) so messages and SQL survive any identifier.

Shape of the dict::

    {
      "tables": 12, "indexes": 30,                # ordinary + partitioned tables; all indexes
      "stats_reset": "2024-...+00:00" | None,     # pg_stat_database.stats_reset of this database
      "top_by_size": [TABLE, ...],                # top N by total bytes
      "top_by_dead_tuples": [TABLE, ...],         # top N by n_dead_tup (> 0 only)
      "top_by_seq_tup_read": [TABLE, ...],        # top N by seq_tup_read (> 0 only)
      "unused_indexes": [{"index", "table", "bytes", "idx_scan", "table_writes", "definition"}],
      "duplicate_indexes": [{"index", "kept_index", "table", "kind": "exact"|"prefix", "bytes",
                             "backs_constraint", "definition", "kept_definition"}],
      "invalid_indexes": [{"index", "table", "bytes", "definition", "partitioned"}],
      "fk_without_index": [{"constraint", "table", "columns": [quoted column, ...], "referenced_table",
                            "seq_scan", "table_bytes", "partitioned"}],
      "counts": {"unused_indexes", "duplicate_indexes", "invalid_indexes", "fk_without_index"},  # uncapped
    }

    TABLE = {"oid", "schema", "table", "name" (quoted schema.table), "table_bytes", "index_bytes",
             "toast_bytes", "total_bytes", "size_estimated", "n_live_tup", "n_dead_tup", "seq_scan",
             "seq_tup_read", "idx_scan", "n_tup_ins", "n_tup_upd", "n_tup_del", "last_vacuum",
             "last_autovacuum", "last_analyze", "last_autoanalyze" (ISO or None), "vacuum_count",
             "autovacuum_count", "analyze_count", "autoanalyze_count", "xid_age"}

Index and table names in the lists are quoted ``schema.name``. Rates: ``{"tables": {name: {
"inserts_per_second", "updates_per_second", "deletes_per_second", "growth_bytes_per_second",
"vacuums", "autovacuums", "analyzes", "autoanalyzes"}}}`` for top-by-size tables seen in both
snapshots (vacuums etc. are counts within the interval); None where a counter went backwards (a
stats reset) and growth None when either size is an estimate. Growth may be negative (a TRUNCATE
or VACUUM FULL shrank the table).
"""

from __future__ import annotations

from datetime import datetime

import psycopg

from dbops_pipelines.config import STATS_THRESHOLD_DEFAULTS
from dbops_pipelines.findings import Finding
from dbops_pipelines.stats.model import CollectEnv, Sample, Section
from dbops_pipelines.stats.rates import counter_rate

SAMPLED_TABLES = 10             # tables that get their own labelled series
SEQ_SCAN_WARNING_SIZE_FACTOR = 10   # seq_scan_heavy is a warning from 10x seq_scan_heavy_min_bytes

USER_RELATION = ("n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast' "
                 "AND c.relpersistence <> 't'")
BLOCK_SIZE = "current_setting('block_size')::bigint"
QUOTED = "quote_ident(n.nspname) || '.' || quote_ident(c.relname)"
# Relations someone holds or waits for an ACCESS EXCLUSIVE lock on: sizing them would queue us.
LOCKED = """locked AS (
    SELECT DISTINCT l.relation FROM pg_locks l
     WHERE l.locktype = 'relation' AND l.mode = 'AccessExclusiveLock' AND l.pid <> pg_backend_pid()
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()))"""

TABLE_COUNTERS = ("n_tup_ins", "n_tup_upd", "n_tup_del", "vacuum_count", "autovacuum_count",
                  "analyze_count", "autoanalyze_count")


def _iso(value):
    return value.isoformat() if isinstance(value, datetime) else value


def _rows(cur: psycopg.Cursor) -> list[dict]:
    names = [d.name for d in cur.description]
    return [{k: _iso(v) for k, v in zip(names, row)} for row in cur.fetchall()]


def collect(conn: psycopg.Connection, env: CollectEnv) -> dict:
    th = getattr(env.settings, "thresholds", None) or STATS_THRESHOLD_DEFAULTS
    n = env.top_n
    tables, indexes = conn.execute(f"""
        SELECT count(*) FILTER (WHERE c.relkind IN ('r', 'p')), count(*) FILTER (WHERE c.relkind IN ('i', 'I'))
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {USER_RELATION}""").fetchone()
    stats_reset = conn.execute(
        "SELECT stats_reset FROM pg_stat_database WHERE datname = current_database()").fetchone()
    by_size, by_dead, by_seq = _table_lists(conn, n)
    unused, unused_count = _unused_indexes(conn, n, th.unused_index_min_bytes)
    duplicate, duplicate_count = _duplicate_indexes(conn, n)
    invalid, invalid_count = _invalid_indexes(conn, env)
    fks, fk_count = _fk_without_index(conn, n)
    return {
        "tables": tables, "indexes": indexes,
        "stats_reset": _iso(stats_reset[0]) if stats_reset else None,
        "top_by_size": by_size, "top_by_dead_tuples": by_dead, "top_by_seq_tup_read": by_seq,
        "unused_indexes": unused, "duplicate_indexes": duplicate, "invalid_indexes": invalid,
        "fk_without_index": fks,
        "counts": {"unused_indexes": unused_count, "duplicate_indexes": duplicate_count,
                   "invalid_indexes": invalid_count, "fk_without_index": fk_count},
    }


def _table_lists(conn: psycopg.Connection, n: int) -> tuple[list[dict], list[dict], list[dict]]:
    # One pass over the catalog ranks every table by estimated size (relpages of heap, TOAST and
    # indexes), by tuple count (catches a freshly loaded table whose relpages is still 0), by dead
    # tuples and by rows read sequentially; only the winners are looked at closely.
    candidates = conn.execute(f"""
        WITH idx AS (
            SELECT i.indrelid, sum(ic.relpages)::bigint AS pages
              FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid GROUP BY i.indrelid
        ), t AS (
            SELECT c.oid, c.relpages::bigint + coalesce(tc.relpages, 0) + coalesce(idx.pages, 0) AS pages,
                   coalesce(s.n_live_tup + s.n_dead_tup, 0) AS tuples, coalesce(s.n_dead_tup, 0) AS dead,
                   coalesce(s.seq_tup_read, 0) AS seq_read
              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              LEFT JOIN pg_class tc ON tc.oid = c.reltoastrelid
              LEFT JOIN idx ON idx.indrelid = c.oid
              LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
             WHERE c.relkind IN ('r', 'm') AND {USER_RELATION}
        ), ranked AS (
            SELECT oid, dead, seq_read,
                   row_number() OVER (ORDER BY pages DESC, oid) AS by_pages,
                   row_number() OVER (ORDER BY tuples DESC, oid) AS by_tuples,
                   row_number() OVER (ORDER BY dead DESC, oid) AS by_dead,
                   row_number() OVER (ORDER BY seq_read DESC, oid) AS by_seq
              FROM t
        )
        SELECT oid FROM ranked
         WHERE by_pages <= 2 * %(n)s OR by_tuples <= %(n)s
            OR (by_dead <= %(n)s AND dead > 0) OR (by_seq <= %(n)s AND seq_read > 0)
    """, {"n": n}).fetchall()
    details = _table_details(conn, [oid for (oid,) in candidates])
    by_size = sorted(details, key=lambda t: (-t["total_bytes"], t["name"]))[:n]
    by_dead = sorted((t for t in details if t["n_dead_tup"] > 0), key=lambda t: (-t["n_dead_tup"], t["name"]))[:n]
    by_seq = sorted((t for t in details if t["seq_tup_read"] > 0), key=lambda t: (-t["seq_tup_read"], t["name"]))[:n]
    return by_size, by_dead, by_seq


def _table_details(conn: psycopg.Connection, oids: list[int]) -> list[dict]:
    if not oids:
        return []
    cur = conn.execute(f"""
        WITH {LOCKED}, rel AS (
            SELECT c.oid, n.nspname, c.relname, {QUOTED} AS name, c.reltoastrelid, c.relfrozenxid,
                   c.relpages::bigint * {BLOCK_SIZE} AS est_table,
                   coalesce(tc.relpages, 0)::bigint * {BLOCK_SIZE} AS est_toast,
                   (SELECT coalesce(sum(ic.relpages), 0)::bigint * {BLOCK_SIZE}
                      FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid WHERE i.indrelid = c.oid) AS est_index,
                   EXISTS (SELECT 1 FROM locked l
                            WHERE l.relation IN (c.oid, c.reltoastrelid)
                               OR l.relation IN (SELECT indexrelid FROM pg_index WHERE indrelid = c.oid)) AS busy
              FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              LEFT JOIN pg_class tc ON tc.oid = c.reltoastrelid
             WHERE c.oid = ANY(%s::oid[])
        ), sized AS (
            SELECT rel.*,
                   CASE WHEN busy THEN NULL ELSE pg_table_size(oid) END AS table_and_toast,
                   CASE WHEN busy THEN NULL WHEN reltoastrelid = 0 THEN 0
                        ELSE pg_total_relation_size(reltoastrelid) END AS toast,
                   CASE WHEN busy THEN NULL ELSE pg_indexes_size(oid) END AS index
              FROM rel
        )
        SELECT z.oid::bigint AS oid, z.nspname AS schema, z.relname AS table, z.name,
               coalesce(z.table_and_toast - z.toast, z.est_table) AS table_bytes,
               coalesce(z.index, z.est_index) AS index_bytes,
               coalesce(z.toast, z.est_toast) AS toast_bytes,
               (z.table_and_toast IS NULL OR z.index IS NULL OR z.toast IS NULL) AS size_estimated,
               coalesce(s.n_live_tup, 0) AS n_live_tup, coalesce(s.n_dead_tup, 0) AS n_dead_tup,
               coalesce(s.seq_scan, 0) AS seq_scan, coalesce(s.seq_tup_read, 0) AS seq_tup_read,
               s.idx_scan, coalesce(s.n_tup_ins, 0) AS n_tup_ins, coalesce(s.n_tup_upd, 0) AS n_tup_upd,
               coalesce(s.n_tup_del, 0) AS n_tup_del,
               s.last_vacuum, s.last_autovacuum, s.last_analyze, s.last_autoanalyze,
               coalesce(s.vacuum_count, 0) AS vacuum_count, coalesce(s.autovacuum_count, 0) AS autovacuum_count,
               coalesce(s.analyze_count, 0) AS analyze_count, coalesce(s.autoanalyze_count, 0) AS autoanalyze_count,
               age(z.relfrozenxid) AS xid_age
          FROM sized z LEFT JOIN pg_stat_user_tables s ON s.relid = z.oid
    """, (oids,))
    rows = _rows(cur)
    for t in rows:
        t["total_bytes"] = t["table_bytes"] + t["index_bytes"] + t["toast_bytes"]
    return rows


def _unused_indexes(conn: psycopg.Connection, n: int, min_bytes: int) -> tuple[list[dict], int]:
    # Unique and constraint indexes do their work without being scanned; invalid ones are reported
    # on their own. The estimate picks the top N, which alone are sized exactly.
    cur = conn.execute(f"""
        WITH {LOCKED}, top AS (
            SELECT i.indexrelid, i.indrelid, ic.relpages, s.idx_scan, count(*) OVER () AS total
              FROM pg_stat_user_indexes s
              JOIN pg_index i ON i.indexrelid = s.indexrelid
              JOIN pg_class ic ON ic.oid = i.indexrelid
             WHERE s.idx_scan = 0 AND NOT i.indisunique AND NOT i.indisprimary AND i.indisvalid
               AND ic.relpersistence <> 't'
               AND NOT EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conrelid = i.indrelid
                                AND con.conindid = i.indexrelid AND con.contype IN ('p', 'u', 'x'))
               AND ic.relpages::bigint * {BLOCK_SIZE} >= %s
             ORDER BY ic.relpages DESC, i.indexrelid LIMIT %s
        )
        SELECT quote_ident(n.nspname) || '.' || quote_ident(ic.relname) AS index, {QUOTED} AS table,
               coalesce(CASE WHEN top.indexrelid IN (SELECT relation FROM locked) THEN NULL
                             ELSE pg_relation_size(top.indexrelid) END,
                        top.relpages::bigint * {BLOCK_SIZE}) AS bytes,
               top.idx_scan, coalesce(t.n_tup_ins + t.n_tup_upd + t.n_tup_del, 0) AS table_writes,
               pg_get_indexdef(top.indexrelid) AS definition, ic.relkind = 'I' AS partitioned, top.total
          FROM top
          JOIN pg_class ic ON ic.oid = top.indexrelid
          JOIN pg_class c ON c.oid = top.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
          LEFT JOIN pg_stat_user_tables t ON t.relid = top.indrelid
         ORDER BY bytes DESC, index
    """, (min_bytes, n))
    return _with_total(_rows(cur))


def _with_total(rows: list[dict]) -> tuple[list[dict], int]:
    total = rows[0]["total"] if rows else 0
    for r in rows:
        del r["total"]
    return rows, total


def _duplicate_indexes(conn: psycopg.Connection, n: int) -> tuple[list[dict], int]:
    """Indexes another index of the same table makes redundant: the same definition (keys, operator
    classes, collations, ordering, expressions, predicate), or a non-unique btree index whose keys are
    the leading keys of another one. Per redundant index, the one to keep is the strongest: a
    primary key, then a constraint's index, then a unique one, then the oldest."""
    cur = conn.execute(f"""
        WITH {LOCKED}, ix AS (
            SELECT i.indexrelid, i.indrelid, i.indisunique, i.indisprimary, i.indnatts, i.indnkeyatts,
                   i.indkey::text AS keys, i.indclass::text AS classes, i.indcollation::text AS collations,
                   i.indoption::text AS options, c.relam, c.relpages,
                   CASE WHEN i.indexprs IS NULL THEN NULL ELSE pg_get_expr(i.indexprs, i.indrelid) END AS exprs,
                   CASE WHEN i.indpred IS NULL THEN NULL ELSE pg_get_expr(i.indpred, i.indrelid) END AS pred,
                   cons.conindid IS NOT NULL AS backs_constraint
              FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
              LEFT JOIN (SELECT DISTINCT conindid FROM pg_constraint WHERE contype IN ('p', 'u', 'x')) cons
                     ON cons.conindid = i.indexrelid
             WHERE i.indisvalid AND i.indisready AND {USER_RELATION}
        ), pairs AS (
            SELECT r.indexrelid AS redundant, k.indexrelid AS kept, 'exact' AS kind, r.relpages,
                   r.backs_constraint, k.indisprimary AS k_primary, k.backs_constraint AS k_constraint,
                   k.indisunique AS k_unique
              FROM ix r JOIN ix k ON k.indrelid = r.indrelid AND k.indexrelid <> r.indexrelid
             WHERE r.relam = k.relam AND r.keys = k.keys AND r.indnkeyatts = k.indnkeyatts
               AND r.classes = k.classes AND r.collations = k.collations AND r.options = k.options
               AND r.exprs IS NOT DISTINCT FROM k.exprs AND r.pred IS NOT DISTINCT FROM k.pred
               AND (k.indisprimary, k.backs_constraint, k.indisunique, r.indexrelid)
                 > (r.indisprimary, r.backs_constraint, r.indisunique, k.indexrelid)
            UNION ALL
            -- From the catalog itself, not from ix: its real statistics get this self-join hashed
            -- (the CTE's estimates made it a nested loop, minutes on 20,000 indexes).
            SELECT r.indexrelid, k.indexrelid, 'prefix', rc.relpages, false,
                   k.indisprimary, EXISTS (SELECT 1 FROM pg_constraint con WHERE con.conrelid = k.indrelid
                                  AND con.conindid = k.indexrelid AND con.contype IN ('p', 'u', 'x')),
                   k.indisunique
              FROM pg_index r
              JOIN pg_class rc ON rc.oid = r.indexrelid
              JOIN pg_index k ON k.indrelid = r.indrelid AND k.indexrelid <> r.indexrelid
              JOIN pg_class kc ON kc.oid = k.indexrelid
             WHERE rc.relam = (SELECT oid FROM pg_am WHERE amname = 'btree') AND kc.relam = rc.relam
               AND r.indisvalid AND r.indisready AND k.indisvalid AND k.indisready
               AND NOT r.indisunique AND r.indnatts = r.indnkeyatts AND r.indnkeyatts <= k.indnkeyatts
               AND r.indexprs IS NULL AND k.indexprs IS NULL AND r.indpred IS NULL AND k.indpred IS NULL
               AND rc.relnamespace IN (SELECT n.oid FROM pg_namespace n
                                        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
                                          AND n.nspname !~ '^pg_toast')
               AND rc.relpersistence <> 't'
               AND k.indkey::text LIKE r.indkey::text || ' %%'
               AND (k.indclass::text = r.indclass::text OR k.indclass::text LIKE r.indclass::text || ' %%')
               AND (k.indcollation::text = r.indcollation::text
                    OR k.indcollation::text LIKE r.indcollation::text || ' %%')
               AND (k.indoption::text = r.indoption::text OR k.indoption::text LIKE r.indoption::text || ' %%')
        ), best AS (
            SELECT DISTINCT ON (redundant) *
              FROM pairs ORDER BY redundant, kind = 'exact' DESC, k_primary DESC, k_constraint DESC,
                                  k_unique DESC, kept
        ), top AS (
            SELECT *, count(*) OVER () AS total FROM best ORDER BY relpages DESC, redundant LIMIT %s
        )
        SELECT quote_ident(n.nspname) || '.' || quote_ident(ri.relname) AS index,
               quote_ident(n.nspname) || '.' || quote_ident(ki.relname) AS kept_index,
               {QUOTED} AS table, top.kind, top.backs_constraint,
               coalesce(CASE WHEN top.redundant IN (SELECT relation FROM locked) THEN NULL
                             ELSE pg_relation_size(top.redundant) END,
                        top.relpages::bigint * {BLOCK_SIZE}) AS bytes,
               pg_get_indexdef(top.redundant) AS definition, pg_get_indexdef(top.kept) AS kept_definition,
               top.total
          FROM top
          JOIN pg_class ri ON ri.oid = top.redundant JOIN pg_class ki ON ki.oid = top.kept
          JOIN pg_index i ON i.indexrelid = top.redundant
          JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         ORDER BY bytes DESC, index
    """, (n,))
    return _with_total(_rows(cur))


def _invalid_indexes(conn: psycopg.Connection, env: CollectEnv) -> tuple[list[dict], int]:
    # An index being built (or rebuilt) CONCURRENTLY right now is invalid until it is done: not a problem.
    building = ("AND i.indrelid NOT IN (SELECT relid FROM pg_stat_progress_create_index)"
                if env.server_version_num >= 120000 else "")
    cur = conn.execute(f"""
        WITH {LOCKED}, top AS (
            SELECT i.indexrelid, i.indrelid, c.relpages, count(*) OVER () AS total
              FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE NOT i.indisvalid AND {USER_RELATION} {building}
             ORDER BY c.relpages DESC, i.indexrelid LIMIT %s
        )
        SELECT quote_ident(n.nspname) || '.' || quote_ident(ic.relname) AS index, {QUOTED} AS table,
               coalesce(CASE WHEN top.indexrelid IN (SELECT relation FROM locked) THEN NULL
                             ELSE pg_relation_size(top.indexrelid) END,
                        top.relpages::bigint * {BLOCK_SIZE}) AS bytes,
               pg_get_indexdef(top.indexrelid) AS definition, ic.relkind = 'I' AS partitioned, top.total
          FROM top
          JOIN pg_class ic ON ic.oid = top.indexrelid
          JOIN pg_class c ON c.oid = top.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         ORDER BY bytes DESC, index
    """, (env.top_n,))
    return _with_total(_rows(cur))


def _fk_without_index(conn: psycopg.Connection, n: int) -> tuple[list[dict], int]:
    """Foreign keys whose columns are not the leading columns of any valid, non-partial index of the
    referencing table (in any order): each DELETE or key UPDATE on the referenced table then scans
    the referencing table. Constraints a partition inherits are reported once, on their parent."""
    cur = conn.execute(f"""
        WITH top AS (
            SELECT con.oid AS con_oid, con.conrelid, con.confrelid, con.conkey,
                   -- a partitioned table has no pages of its own (relpages -1): its partitions' sum
                   CASE WHEN c.relkind = 'p'
                        THEN (SELECT coalesce(sum(greatest(pc.relpages, 0)), 0)
                                FROM pg_partition_tree(c.oid) pt JOIN pg_class pc ON pc.oid = pt.relid
                               WHERE pt.isleaf)
                        ELSE greatest(c.relpages, 0) END AS relpages,
                   count(*) OVER () AS total
              FROM pg_constraint con
              JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE con.contype = 'f' AND con.conparentid = 0 AND {USER_RELATION}
               AND NOT EXISTS (
                   SELECT 1 FROM pg_index i
                    WHERE i.indrelid = con.conrelid AND i.indisvalid AND i.indpred IS NULL
                      AND i.indnkeyatts >= cardinality(con.conkey)
                      AND (i.indkey::int2[])[0:cardinality(con.conkey) - 1] @> con.conkey
                      AND (i.indkey::int2[])[0:cardinality(con.conkey) - 1] <@ con.conkey)
             ORDER BY relpages DESC, con.oid LIMIT %s
        )
        SELECT quote_ident(con.conname) AS constraint, {QUOTED} AS table,
               ARRAY(SELECT quote_ident(a.attname)
                       FROM unnest(top.conkey) WITH ORDINALITY AS k(attnum, ord)
                       JOIN pg_attribute a ON a.attrelid = top.conrelid AND a.attnum = k.attnum
                      ORDER BY k.ord) AS columns,
               quote_ident(rn.nspname) || '.' || quote_ident(rc.relname) AS referenced_table,
               CASE WHEN c.relkind = 'p'
                    THEN (SELECT coalesce(sum(ps.seq_scan), 0)::bigint FROM pg_partition_tree(c.oid) pt
                            JOIN pg_stat_user_tables ps ON ps.relid = pt.relid WHERE pt.isleaf)
                    ELSE coalesce(s.seq_scan, 0) END AS seq_scan,
               top.relpages::bigint * {BLOCK_SIZE} AS table_bytes,
               c.relkind = 'p' AS partitioned, top.total
          FROM top
          JOIN pg_constraint con ON con.oid = top.con_oid
          JOIN pg_class c ON c.oid = top.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
          JOIN pg_class rc ON rc.oid = top.confrelid JOIN pg_namespace rn ON rn.oid = rc.relnamespace
          LEFT JOIN pg_stat_user_tables s ON s.relid = top.conrelid
         ORDER BY table_bytes DESC, "table", "constraint"
    """, (n,))
    return _with_total(_rows(cur))


# --- rates and samples --------------------------------------------------------------------------

def rates(prev_data: dict | None, cur_data: dict, seconds: float) -> dict:
    if not prev_data:
        return {}
    before = {t["name"]: t for t in prev_data.get("top_by_size", [])}
    out: dict[str, dict] = {}
    for t in cur_data.get("top_by_size", []):
        p = before.get(t["name"])
        if p is None or p.get("oid") != t.get("oid"):     # not seen, or dropped and created again
            continue
        # A reset zeroes every counter of the table at once: one going backwards voids them all.
        reset = any(t[k] < p.get(k, 0) for k in TABLE_COUNTERS)
        exact = not (t.get("size_estimated") or p.get("size_estimated"))
        out[t["name"]] = {
            "inserts_per_second": counter_rate(p["n_tup_ins"], t["n_tup_ins"], seconds, reset),
            "updates_per_second": counter_rate(p["n_tup_upd"], t["n_tup_upd"], seconds, reset),
            "deletes_per_second": counter_rate(p["n_tup_del"], t["n_tup_del"], seconds, reset),
            "growth_bytes_per_second": (t["total_bytes"] - p["total_bytes"]) / seconds
            if exact and seconds > 0 else None,
            **{f"{what}s": None if reset else t[f"{what}_count"] - p[f"{what}_count"]
               for what in ("vacuum", "autovacuum", "analyze", "autoanalyze")},
        }
    return {"tables": out}


def samples(data: dict, rates: dict) -> list[Sample]:
    counts = data.get("counts", {})
    out = [
        Sample("tables", float(data["tables"]), help="Tables (ordinary and partitioned) in the database"),
        Sample("indexes", float(data["indexes"]), help="Indexes in the database"),
        # Not "..._total": Prometheus reserves that suffix for counters, and this is a gauge.
        Sample("top_tables_dead_tuples", float(sum(t["n_dead_tup"] for t in data.get("top_by_dead_tuples", []))),
               help="Dead tuples summed over the top-N tables by dead tuples"),
        Sample("unused_indexes", float(counts.get("unused_indexes", 0)),
               help="Indexes never scanned since the statistics were reset (unique and constraint ones excluded)"),
        Sample("duplicate_indexes", float(counts.get("duplicate_indexes", 0)),
               help="Indexes made redundant by another index of the same table"),
        Sample("invalid_indexes", float(counts.get("invalid_indexes", 0)), help="Indexes marked invalid"),
        Sample("fk_without_index", float(counts.get("fk_without_index", 0)),
               help="Foreign keys whose columns lead no index of the referencing table"),
    ]
    for t in data.get("top_by_size", [])[:SAMPLED_TABLES]:
        label = (("table", t["name"]),)
        out.append(Sample("table_size_bytes", float(t["total_bytes"]), label,
                          help="Total size of a top-10 table: heap, TOAST and indexes"))
        out.append(Sample("table_dead_tuples", float(t["n_dead_tup"]), label, help="Dead tuples of a top-10 table"))
    return out


# --- findings -----------------------------------------------------------------------------------

def _mb(n: float) -> str:
    return f"{n / (1 << 20):.1f} MB"


def _all_tables(data: dict) -> list[dict]:
    seen: dict[str, dict] = {}
    for key in ("top_by_size", "top_by_dead_tuples", "top_by_seq_tup_read"):
        for t in data.get(key, []):
            seen.setdefault(t["name"], t)
    return sorted(seen.values(), key=lambda t: t["name"])


def findings(target: str, data: dict, rates: dict, thresholds) -> list[Finding]:
    th = thresholds
    out: list[Finding] = []
    for t in _all_tables(data):
        out += _dead_tuples(target, t, th) + _seq_scan_heavy(target, t, th)
    since = f"since {data['stats_reset']}" if data.get("stats_reset") else "since statistics began"
    for ix in data.get("unused_indexes", []):
        if ix["bytes"] >= th.unused_index_min_bytes:
            out.append(_unused_index(target, ix, since))
    out += [_duplicate_index(target, d) for d in data.get("duplicate_indexes", [])]
    out += [_invalid_index(target, ix) for ix in data.get("invalid_indexes", [])]
    out += [_fk_without_index_finding(target, fk, th) for fk in data.get("fk_without_index", [])]
    return out


def _dead_tuples(target: str, t: dict, th) -> list[Finding]:
    dead, live = t["n_dead_tup"], t["n_live_tup"]
    if not (dead > th.dead_tuples_count and dead > th.dead_tuples_ratio * live):
        return []
    last = t["last_autovacuum"] or t["last_vacuum"] or "never"
    return [Finding(
        "dead_tuples", "warning", target, t["name"],
        f"{t['name']} has {dead} dead tuples against {live} live ({dead / max(live, 1):.0%}; thresholds "
        f"{th.dead_tuples_count} and {th.dead_tuples_ratio:.0%} of live); last vacuumed {last}",
        "VACUUM the table now. If autovacuum does not keep up, lower its autovacuum_vacuum_scale_factor "
        "(ALTER TABLE ... SET) or raise autovacuum workers/cost limit; if VACUUM removes nothing, a long "
        "transaction, an idle-in-transaction session, a replication slot or a prepared transaction holds "
        "back the xmin horizon: end it.",
        f"VACUUM (ANALYZE) {t['name']}")]


def _seq_scan_heavy(target: str, t: dict, th) -> list[Finding]:
    seq, idx = t["seq_scan"], t["idx_scan"] or 0
    index_ratio = idx / (seq + idx) if seq + idx else 0.0
    if not (seq >= th.seq_scan_heavy_min_scans and t["table_bytes"] >= th.seq_scan_heavy_min_bytes
            and index_ratio <= th.seq_scan_heavy_max_index_ratio):
        return []
    big = t["table_bytes"] >= SEQ_SCAN_WARNING_SIZE_FACTOR * max(th.seq_scan_heavy_min_bytes, 1)
    return [Finding(
        "seq_scan_heavy", "warning" if big else "info", target, t["name"],
        f"{t['name']} ({_mb(t['table_bytes'])}) was scanned sequentially {seq} times ({t['seq_tup_read']} rows "
        f"read) against {idx} index scans ({index_ratio:.1%} by index; threshold {th.seq_scan_heavy_max_index_ratio:.1%})",
        "Find the queries that scan it in pg_stat_statements (look for the table's name among the statements "
        "with the most rows or time) and EXPLAIN them; an index on their WHERE/JOIN columns usually fixes it.")]


def _unused_index(target: str, ix: dict, since: str) -> Finding:
    written = ix["table_writes"] > 0
    return Finding(
        "unused_index", "warning" if written else "info", target, ix["index"],
        f"index {ix['index']} on {ix['table']} ({_mb(ix['bytes'])}) has not been scanned {since}"
        + (f"; the table had {ix['table_writes']} row writes, each one maintaining it" if written else ""),
        "Drop it if nothing needs it. Check first: these counters start at the last statistics reset and "
        "only count this server, so an index used only on a replica, or only by a rare job (a monthly "
        "report), looks unused here.",
        f"DROP INDEX CONCURRENTLY {ix['index']}")


def _duplicate_index(target: str, d: dict) -> Finding:
    how = ("has the same definition as" if d["kind"] == "exact"
           else "is covered by the leading columns of")
    sql = None if d["backs_constraint"] else f"DROP INDEX CONCURRENTLY {d['index']}"
    return Finding(
        "duplicate_index", "warning", target, d["index"],
        f"index {d['index']} ({_mb(d['bytes'])}) on {d['table']} {how} {d['kept_index']}: "
        f"{d['definition']} vs {d['kept_definition']}",
        f"Keep {d['kept_index']} and drop {d['index']}: every write maintains both for no gain."
        + (" It backs a constraint: drop that constraint instead (ALTER TABLE ... DROP CONSTRAINT) once "
           "nothing depends on it." if d["backs_constraint"] else ""),
        sql)


def _invalid_index(target: str, ix: dict) -> Finding:
    if ix.get("partitioned"):
        # The index of a partitioned table is invalid until every partition's index is attached
        # (CREATE INDEX ... ON ONLY, then ALTER INDEX ... ATTACH PARTITION): often a build under
        # way; CONCURRENTLY is not supported on it.
        return Finding(
            "invalid_index", "info", target, ix["index"],
            f"index {ix['index']} of partitioned table {ix['table']} is invalid: not every partition has an index "
            "attached to it yet",
            f"If nobody is building it right now, create the missing partitions' indexes and attach each with "
            f"ALTER INDEX {ix['index']} ATTACH PARTITION <the partition's index>; or drop it and create it again "
            "without ON ONLY.")
    recreate = ix["definition"].replace(" INDEX ", " INDEX CONCURRENTLY ", 1)
    return Finding(
        "invalid_index", "warning", target, ix["index"],
        f"index {ix['index']} on {ix['table']} ({_mb(ix['bytes'])}) is invalid: a CREATE INDEX CONCURRENTLY or "
        f"REINDEX CONCURRENTLY failed; queries do not use it, yet every write still maintains it",
        "Drop it and create it again (fix what made the build fail first, e.g. duplicate values for a unique "
        f"index), or rebuild it in place with REINDEX INDEX CONCURRENTLY {ix['index']}.",
        f"DROP INDEX CONCURRENTLY {ix['index']};\n{recreate};")


def _fk_without_index_finding(target: str, fk: dict, th) -> Finding:
    columns = ", ".join(fk["columns"])
    small = fk["table_bytes"] < th.fk_without_index_min_bytes
    concurrently = "" if fk["partitioned"] else " CONCURRENTLY"   # not supported on partitioned tables
    return Finding(
        "fk_without_index", "info" if small else "warning", target, f"{fk['table']} ({columns})",
        f"foreign key {fk['constraint']} of {fk['table']} ({columns}) referencing {fk['referenced_table']} has no "
        f"index on its columns; {fk['table']} ({_mb(fk['table_bytes'])}) had {fk['seq_scan']} sequential scans",
        f"Index the referencing columns: without it every DELETE or key UPDATE on {fk['referenced_table']} scans "
        f"{fk['table']}, and joins on the key cannot use an index.",
        f"CREATE INDEX{concurrently} ON {fk['table']} ({columns})")


SECTION = Section(name="tables", collect=collect, rates=rates, samples=samples, findings=findings)
