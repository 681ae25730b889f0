"""The audit trail of GDPR runs, in an ops schema of the target database beside (never inside) the
application's tables: which run, who or what started it, the cutoff, dry run or not, and per
table how many rows were deleted or anonymized. Never the personal data itself: no keys, no values.

A cleanup counts each batch in the batch's own transaction, so the trail is exact even when a run
is killed half-way (its row then stays `running`). The newest ledger entry is noted with each
batch: a ledger that lost entries is noticed by the next run (service.py).

    <schema>.gdpr_run        run_id, target, kind, actor, started_at, finished_at, cutoff,
                             grace_days, dry_run, outcome, ledger_seq
    <schema>.gdpr_run_table  run_id, table_name, action, rows
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

import psycopg
from psycopg import sql

from dbops_pipelines.errors import ConfigError

_DDL = {
    "gdpr_run": """CREATE TABLE {s}.gdpr_run (
        run_id text PRIMARY KEY, target text NOT NULL, kind text NOT NULL, actor text NOT NULL,
        started_at timestamptz NOT NULL DEFAULT now(), finished_at timestamptz, cutoff timestamptz,
        grace_days integer, dry_run boolean NOT NULL, outcome text NOT NULL DEFAULT 'running', ledger_seq bigint)""",
    "gdpr_run_table": """CREATE TABLE {s}.gdpr_run_table (
        run_id text NOT NULL REFERENCES {s}.gdpr_run ON DELETE CASCADE, table_name text NOT NULL,
        action text NOT NULL, rows bigint NOT NULL, PRIMARY KEY (run_id, table_name, action))""",
}


def ensure_schema(conn: psycopg.Connection, schema: str) -> None:
    """Create the schema and its tables where missing. Existence is checked first: a role that
    may not CREATE in the database can still use a schema made for it."""
    try:
        with conn.transaction():
            if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            for table, ddl in _DDL.items():
                if conn.execute("SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                                "WHERE n.nspname = %s AND c.relname = %s", (schema, table)).fetchone() is None:
                    conn.execute(sql.SQL(ddl).format(s=sql.Identifier(schema)))
    except psycopg.errors.InsufficientPrivilege:
        (role,) = conn.execute("SELECT current_user").fetchone()
        raise ConfigError(f"the GDPR audit schema {schema!r} is missing and role {role!r} may not create it",
                          f"as the database owner: CREATE SCHEMA {sql.Identifier(schema).as_string(conn)} "
                          f"AUTHORIZATION {sql.Identifier(role).as_string(conn)}; "
                          "or set gdpr.audit_schema to a schema that role owns (docs/gdpr.md#audit-trail)") from None
    # Made by someone else: the role must still be able to write to it, or the run would fail later.
    row = conn.execute(
        "SELECT has_schema_privilege(current_user, n.oid, 'USAGE') AND bool_and(has_table_privilege("
        "current_user, c.oid, 'SELECT, INSERT, UPDATE')) FROM pg_namespace n JOIN pg_class c ON c.relnamespace = n.oid "
        "WHERE n.nspname = %s AND c.relname IN ('gdpr_run', 'gdpr_run_table') GROUP BY n.oid", (schema,)).fetchone()
    if not row or not row[0]:
        (role,) = conn.execute("SELECT current_user").fetchone()
        s, r = sql.Identifier(schema).as_string(conn), sql.Identifier(role).as_string(conn)
        raise ConfigError(f"role {role!r} may not write to the GDPR audit schema {schema!r}",
                          f"as its owner: GRANT USAGE ON SCHEMA {s} TO {r}; "
                          f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA {s} TO {r}")


def _t(schema: str, table: str) -> sql.Identifier:
    return sql.Identifier(schema, table)


def start_run(conn: psycopg.Connection, schema: str, run_id: str, target: str, kind: str, actor: str,
              cutoff: datetime | None, grace_days: int | None, dry_run: bool) -> None:
    # A Dagster run retried in place keeps its run id: the row is taken over, its counts kept.
    conn.execute(sql.SQL("INSERT INTO {} (run_id, target, kind, actor, cutoff, grace_days, dry_run) "
                         "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (run_id) DO UPDATE SET "
                         "outcome = 'running', finished_at = NULL, cutoff = excluded.cutoff").format(_t(schema, "gdpr_run")),
                 (run_id, target, kind, actor, cutoff, grace_days, dry_run))


def count(conn: psycopg.Connection, schema: str, run_id: str, done: Counter, ledger_seq: int | None = None) -> None:
    """Add one batch's rows ((table, action) -> rows) to the run's totals; inside the batch's transaction."""
    rows = [(run_id, table, action, n) for (table, action), n in sorted(done.items()) if n]
    if rows:
        with conn.cursor() as cur:
            cur.executemany(sql.SQL("INSERT INTO {} AS r (run_id, table_name, action, rows) VALUES (%s, %s, %s, %s) "
                                    "ON CONFLICT (run_id, table_name, action) DO UPDATE SET rows = r.rows + excluded.rows")
                            .format(_t(schema, "gdpr_run_table")), rows)
    if ledger_seq is not None:
        conn.execute(sql.SQL("UPDATE {} SET ledger_seq = %s WHERE run_id = %s").format(_t(schema, "gdpr_run")),
                     (ledger_seq, run_id))


def finish_run(conn: psycopg.Connection, schema: str, run_id: str, outcome: str, ledger_seq: int | None = None) -> None:
    conn.execute(sql.SQL("UPDATE {} SET finished_at = now(), outcome = %s, ledger_seq = greatest(ledger_seq, %s) "
                         "WHERE run_id = %s").format(_t(schema, "gdpr_run")), (outcome, ledger_seq, run_id))


def recorded_ledger_seq(conn: psycopg.Connection, schema: str, target: str) -> int | None:
    """The newest ledger entry the audit trail knows of, read by any role that may (the backup
    role reads every table); None when there is no audit trail to read."""
    try:
        with conn.transaction():
            return last_ledger_seq(conn, schema, target)
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName, psycopg.errors.InsufficientPrivilege):
        return None


def last_ledger_seq(conn: psycopg.Connection, schema: str, target: str) -> int:
    (seq,) = conn.execute(sql.SQL("SELECT coalesce(max(ledger_seq), 0) FROM {} WHERE target = %s").format(
        _t(schema, "gdpr_run")), (target,)).fetchone()
    return seq


def runs(conn: psycopg.Connection, schema: str, target: str, limit: int = 50) -> list[dict]:
    """The newest runs with their per-table rows, for `dbops gdpr ledger` and the docs' examples."""
    cur = conn.execute(sql.SQL("""
        SELECT r.run_id, r.kind, r.actor, r.started_at, r.finished_at, r.cutoff, r.dry_run, r.outcome, r.ledger_seq,
               coalesce(jsonb_object_agg(t.table_name || ' ' || t.action, t.rows) FILTER (WHERE t.run_id IS NOT NULL), '{{}}')
          FROM {runs} r LEFT JOIN {tables} t USING (run_id)
         WHERE r.target = %s GROUP BY r.run_id ORDER BY r.started_at DESC LIMIT %s""").format(
        runs=_t(schema, "gdpr_run"), tables=_t(schema, "gdpr_run_table")), (target, limit))
    names = [d.name for d in cur.description]
    return [dict(zip(names[:-1] + ["rows"], row)) for row in cur.fetchall()]
