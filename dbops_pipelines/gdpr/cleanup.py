"""GDPR cleanup: hard-delete what was soft-deleted longer ago than the grace period, under live
traffic, in short batches.

Each batch is its own transaction with ``lock_timeout`` and ``statement_timeout``: it locks up to
``batch_size`` eligible people in primary-key order with ``FOR UPDATE SKIP LOCKED`` (a row another
session holds is left for a later pass, nobody waits on us and we wait on nobody), removes what
belongs to them children first (plan.reached_rows: the rules of each foreign key), then the
people themselves, re-checking the grace predicate at delete time (a person undeleted meanwhile is
kept). A batch commits whole or not at all: a crash or kill leaves every finished batch done and
nothing half-done, and the next run goes on from what is left. Passes repeat while they make
progress; what stays locked to the end is reported, never waited for.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg
from psycopg import sql

from dbops_pipelines.config import GdprSettings
from dbops_pipelines.gdpr.anonymize import hash_secret, new_value
from dbops_pipelines.gdpr.catalog import GdprCatalog, Table
from dbops_pipelines.gdpr.plan import cols, ident, link_action, reached_rows

MAX_PASSES = 5


@dataclass
class CleanupResult:
    target: str
    cutoff: datetime
    removed: Counter = field(default_factory=Counter)      # (table, action) -> rows
    batches: int = 0
    passes: int = 0
    still_locked: dict[str, int] = field(default_factory=dict)   # eligible rows others held to the end

    def to_dict(self) -> dict:
        return {"target": self.target, "cutoff": self.cutoff.isoformat(), "batches": self.batches,
                "passes": self.passes, "still_locked": self.still_locked,
                "tables": [{"table": t, "action": a, "rows": n} for (t, a), n in sorted(self.removed.items())]}


def _keys_condition(table: Table, keys: list[tuple]) -> sql.Composed:
    values = sql.SQL(", ").join(sql.SQL("({})").format(sql.SQL(", ").join(map(sql.Literal, k))) for k in keys)
    return sql.SQL("({cols}) IN (VALUES {values})").format(cols=cols(table.primary_key), values=values)


def _timeouts(conn: psycopg.Connection, settings: GdprSettings) -> None:
    conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{round(settings.lock_timeout_seconds * 1000)}ms")))
    conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(
        sql.Literal(f"{round(settings.statement_timeout_seconds * 1000)}ms")))


def _anonymize(conn: psycopg.Connection, catalog: GdprCatalog, name: str, kept: list, secret: bytes | None) -> int:
    """Overwrite the configured columns of ``name``'s rows that belong to the people going, and
    clear their keys to the rows that go; the rows themselves stay."""
    columns = catalog.anonymized[name].columns
    links = sorted({c for fk, _ in kept for c in fk.child_columns} - set(columns))
    pk = catalog.kept_keys[name]
    rows = conn.execute(sql.SQL("SELECT {pk}, {cs} FROM {t} WHERE {w} FOR UPDATE").format(
        pk=cols(pk), cs=cols(columns), t=ident(name), w=sql.SQL(" OR ").join(w for _, w in kept))).fetchall()
    if not rows:
        return 0
    sets = sql.SQL(", ").join([sql.SQL("{} = %s").format(sql.Identifier(c)) for c in columns]
                              + [sql.SQL("{} = NULL").format(sql.Identifier(c)) for c in links])
    where = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in pk)
    with conn.cursor() as cur:
        cur.executemany(sql.SQL("UPDATE {t} SET {sets} WHERE {where}").format(t=ident(name), sets=sets, where=where),
                        [[new_value(action, value, secret) for action, value in zip(columns.values(), row[len(pk):])]
                         + list(row[:len(pk)]) for row in rows])
    return len(rows)


def _batch(conn: psycopg.Connection, catalog: GdprCatalog, table: Table, settings: GdprSettings, cutoff: datetime,
           after: tuple | None, result: CleanupResult, secret: bytes | None) -> tuple | None:
    """One transaction: lock up to batch_size eligible rows of ``table`` after ``after``, remove them
    and (for the subject table) what belongs to them. Returns the last key locked, None when none."""
    column = sql.Identifier(settings.soft_delete_column)
    with conn.transaction():
        _timeouts(conn, settings)
        start = (sql.SQL("AND ({}) > ({})").format(cols(table.primary_key), sql.SQL(", ").join(map(sql.Literal, after)))
                 if after else sql.SQL(""))
        keys = conn.execute(sql.SQL(
            "SELECT {pk} FROM {t} WHERE {col} < {cutoff} {start} ORDER BY {pk} LIMIT {n} FOR UPDATE SKIP LOCKED").format(
            pk=cols(table.primary_key), t=ident(table.name), col=column, cutoff=sql.Literal(cutoff), start=start,
            n=sql.Literal(settings.batch_size))).fetchall()
        if not keys:
            return None
        chosen = _keys_condition(table, keys)
        if table.name == catalog.subject.name:
            ways = reached_rows(catalog, chosen)
            for child, links in sorted(ways.items()):              # kept rows first: unlinked, then anonymized
                kept = [(fk, w) for fk, w in links if link_action(catalog, fk) == "anonymize"]
                if kept:
                    result.removed[(child, "anonymize")] += _anonymize(conn, catalog, child, kept, secret)
            for child in catalog.deletion_order()[:-1]:             # children first, the subject last
                doomed = [w for fk, w in ways.get(child, []) if link_action(catalog, fk) == "delete"]
                if doomed:
                    cur = conn.execute(sql.SQL("DELETE FROM {t} WHERE {w}").format(
                        t=ident(child), w=sql.SQL(" OR ").join(doomed)))
                    result.removed[(child, "delete")] += cur.rowcount
        # The grace predicate again, at delete time: a row undeleted since it was chosen stays.
        cur = conn.execute(sql.SQL("DELETE FROM {t} WHERE {chosen} AND {col} < {cutoff}").format(
            t=ident(table.name), chosen=chosen, col=column, cutoff=sql.Literal(cutoff)))
        result.removed[(table.name, "delete")] += cur.rowcount
    result.batches += 1
    return keys[-1]


def run_cleanup(conn: psycopg.Connection, target: str, catalog: GdprCatalog, settings: GdprSettings,
                log: Callable[[str], None] = lambda line: None) -> CleanupResult:
    """Remove every eligible row of every soft-deletable table (the subject table first), batch by
    batch. ``conn`` must be in autocommit mode: each batch is its own transaction."""
    secret = hash_secret(settings)          # before anything runs: a missing secret changes nothing
    (now,) = conn.execute("SELECT now()").fetchone()
    result = CleanupResult(target, now - timedelta(days=settings.grace_days))
    for _ in range(MAX_PASSES):
        result.passes += 1
        before = sum(result.removed.values())
        for table in catalog.soft_deletable:
            after = None
            while (after := _batch(conn, catalog, table, settings, result.cutoff, after, result, secret)) is not None:
                log(f"{table.name}: {result.removed[(table.name, 'delete')]} rows removed so far")
        if sum(result.removed.values()) == before:
            break          # a pass that removed nothing: what is left is held by others (or nothing is)
    for table in catalog.soft_deletable:
        (left,) = conn.execute(sql.SQL("SELECT count(*) FROM {t} WHERE {col} < {cutoff}").format(
            t=ident(table.name), col=sql.Identifier(settings.soft_delete_column),
            cutoff=sql.Literal(result.cutoff))).fetchone()
        if left:
            result.still_locked[table.name] = left
    return result
