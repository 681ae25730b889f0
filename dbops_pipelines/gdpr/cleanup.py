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

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol
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
    # People the database refused to let go (a key this run does not follow), with why: left, reported.
    blocked: dict[str, list[dict]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)          # tables cleanup cannot work on, and why
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"target": self.target, "cutoff": self.cutoff.isoformat(), "batches": self.batches,
                "passes": self.passes, "still_locked": self.still_locked, "blocked": self.blocked,
                "skipped": self.skipped, "notes": self.notes,
                "tables": [{"table": t, "action": a, "rows": n} for (t, a), n in sorted(self.removed.items())]}


def _keys_condition(table: Table, keys: list[tuple]) -> sql.Composed:
    """``table``'s rows with these keys. Keys travel as text and are cast back to the key's own
    types on the server (char(n), enums, infinity, uuid compare as themselves, indexes apply)."""
    arrays = sql.SQL(", ").join(sql.SQL("{}::text[]").format(sql.Literal([k[i] for k in keys]))
                                for i in range(len(table.primary_key)))
    casts = sql.SQL(", ").join(sql.SQL("k.c{}::{}").format(sql.SQL(str(i)), sql.SQL(t))
                               for i, t in enumerate(table.key_types))
    names = sql.SQL(", ").join(sql.SQL("c{}").format(sql.SQL(str(i))) for i in range(len(table.primary_key)))
    return sql.SQL("({cols}) IN (SELECT {casts} FROM unnest({arrays}) AS k({names}))").format(
        cols=cols(table.primary_key), casts=casts, arrays=arrays, names=names)


def _key_text(table: Table) -> sql.Composed:
    return sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in table.primary_key)


def _after(table: Table, after: tuple | None) -> sql.Composable:
    if not after:
        return sql.SQL("")
    typed = sql.SQL(", ").join(sql.SQL("{}::{}").format(sql.Literal(v), sql.SQL(t)) for v, t in zip(after, table.key_types))
    return sql.SQL("AND ({}) > ({})").format(cols(table.primary_key), typed)


def set_timeouts(conn: psycopg.Connection, settings: GdprSettings) -> None:
    conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{round(settings.lock_timeout_seconds * 1000)}ms")))
    conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(
        sql.Literal(f"{round(settings.statement_timeout_seconds * 1000)}ms")))


def _anonymize(conn: psycopg.Connection, catalog: GdprCatalog, name: str, kept: list, secret: bytes | None) -> int:
    """Overwrite the configured columns of ``name``'s rows that belong to the people going, and
    clear each key only where the row it points to goes; the rows themselves stay."""
    columns = catalog.anonymized[name].columns
    table = catalog.kept[name]
    rows = conn.execute(sql.SQL("SELECT {keys}, {cs} FROM {t} WHERE {w} FOR UPDATE").format(
        keys=_key_text(table), cs=cols(columns), t=ident(name),
        w=sql.SQL(" OR ").join(w for _, w in kept))).fetchall()
    if not rows:
        return 0
    n = len(table.primary_key)
    where = sql.SQL(" AND ").join(sql.SQL("{} = %s::{}").format(sql.Identifier(c), sql.SQL(t))
                                  for c, t in zip(table.primary_key, table.key_types))
    sets = sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in columns)
    with conn.cursor() as cur:
        cur.executemany(sql.SQL("UPDATE {t} SET {sets} WHERE {where}").format(t=ident(name), sets=sets, where=where),
                        [[new_value(action, value, secret) for action, value in zip(columns.values(), row[n:])]
                         + list(row[:n]) for row in rows])
    for fk, w in kept:                      # this key points at a row that goes: clear it, and only it
        to_clear = [c for c in fk.child_columns if c not in columns]
        if to_clear:
            cleared = sql.SQL(", ").join(sql.SQL("{} = NULL").format(sql.Identifier(c)) for c in to_clear)
            conn.execute(sql.SQL("UPDATE {t} SET {cleared} WHERE {w}").format(t=ident(name), cleared=cleared, w=w))
    return len(rows)


def _lock(conn: psycopg.Connection, table: Table, settings: GdprSettings, cutoff: datetime,
          where: sql.Composable, limit: int) -> list[tuple]:
    # ORDER BY the table's columns (qualified): unqualified, it would sort the *output* columns,
    # the keys cast to text (a full sort spilling to disk, and an order that disagrees with `after`).
    return conn.execute(sql.SQL(
        "SELECT {text} FROM {t} AS r WHERE {col} < {cutoff} {where} ORDER BY {pk} LIMIT {n} FOR UPDATE SKIP LOCKED").format(
        text=_key_text(table), pk=sql.SQL(", ").join(sql.Identifier("r", c) for c in table.primary_key), t=ident(table.name),
        col=sql.Identifier(settings.soft_delete_column), cutoff=sql.Literal(cutoff), where=where,
        n=sql.Literal(limit))).fetchall()


def erase_rows(conn: psycopg.Connection, catalog: GdprCatalog, table: Table, settings: GdprSettings, cutoff: datetime | None,
            keys: list[tuple], secret: bytes | None) -> tuple[Counter, list[list[str]]]:
    """Inside the batch's transaction: remove the rows with ``keys`` (locked by us) and, for the
    subject table, what belongs to them. Returns what was done, to be counted once committed, and
    the keys of the rows that went. ``cutoff`` None (re-applying the ledger): no grace check."""
    done: Counter = Counter()
    chosen = _keys_condition(table, keys)
    if table.name == catalog.subject.name:
        ways = reached_rows(catalog, chosen)
        for child, links in sorted(ways.items()):              # kept rows first: anonymized and unlinked
            kept = [(fk, w) for fk, w in links if link_action(catalog, fk) == "anonymize"]
            if kept:
                done[(child, "anonymize")] += _anonymize(conn, catalog, child, kept, secret)
        for child in catalog.deletion_order()[:-1]:             # children first, the subject last
            doomed = [w for fk, w in ways.get(child, []) if link_action(catalog, fk) == "delete"]
            for w in doomed:        # one statement per key: an OR of them defeats every index
                cur = conn.execute(sql.SQL("DELETE FROM {t} WHERE {w}").format(t=ident(child), w=w))
                done[(child, "delete")] += cur.rowcount
    # The grace predicate again, at delete time: a row undeleted since it was chosen stays.
    grace = sql.SQL("") if cutoff is None else sql.SQL("AND {col} < {cutoff}").format(
        col=sql.Identifier(settings.soft_delete_column), cutoff=sql.Literal(cutoff))
    gone = conn.execute(sql.SQL("DELETE FROM {t} WHERE {chosen} {grace} RETURNING {text}").format(
        t=ident(table.name), chosen=chosen, grace=grace, text=_key_text(table))).fetchall()
    done[(table.name, "delete")] += len(gone)
    return done, [list(k) for k in gone]


class Journal(Protocol):
    def record(self, conn: psycopg.Connection, table: Table, gone: list[list[str]], done: Counter) -> None:
        """Called inside a batch's transaction, before it commits, with what it erased: a
        failure here rolls the batch back (nobody is erased without a record)."""


def _erase(conn: psycopg.Connection, catalog: GdprCatalog, table: Table, settings: GdprSettings, cutoff: datetime | None,
           keys: list[tuple], secret: bytes | None, journal: Journal | None) -> Counter:
    done, gone = erase_rows(conn, catalog, table, settings, cutoff, keys, secret)
    if journal is not None and sum(done.values()):
        journal.record(conn, table, gone, done)
    return done


def why_not(exc: psycopg.Error) -> str:
    """A database refusal as it may be reported: its class, constraint and first line, never its
    DETAIL (which quotes key values: an e-mail address in a foreign key's DETAIL is personal data)."""
    diag = exc.diag
    if not isinstance(exc, (psycopg.errors.IntegrityError, psycopg.errors.OperationalError)):
        # A data error's first line quotes the value it could not take ("invalid input syntax for
        # type integer: ..."): the class and the SQLSTATE only.
        return f"{type(exc).__name__} (SQLSTATE {diag.sqlstate})"
    where = f" (constraint {diag.constraint_name})" if diag.constraint_name else ""
    return f"{type(exc).__name__}{where}: {diag.message_primary or 'refused'}"


def _batch(conn: psycopg.Connection, catalog: GdprCatalog, table: Table, settings: GdprSettings, cutoff: datetime,
           after: tuple | None, result: CleanupResult, secret: bytes | None, journal: Journal | None) -> tuple | None:
    """One transaction: lock up to batch_size eligible rows of ``table`` after ``after`` and
    remove them with what belongs to them. If the database refuses (a foreign key this run does
    not follow, a row of a child held by another session, a timeout), the batch is rolled back and
    its people are taken one by one, each in its own transaction: those refused are reported as
    blocked, with why, and the run goes on. Returns the last key chosen, None when none is left."""
    keys: list[tuple] = []
    try:
        with conn.transaction():
            set_timeouts(conn, settings)
            keys = _lock(conn, table, settings, cutoff, _after(table, after), settings.batch_size)
            if not keys:
                return None
            done = _erase(conn, catalog, table, settings, cutoff, keys, secret, journal)
        result.removed.update(done)
        result.batches += 1
        return keys[-1]
    except (psycopg.errors.IntegrityError, psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled,
            psycopg.errors.DeadlockDetected) as exc:
        if not keys:
            raise
        first = why_not(exc)
    for key in keys:                                  # the batch failed: one person at a time
        try:
            with conn.transaction():
                set_timeouts(conn, settings)
                if _lock(conn, table, settings, cutoff, sql.SQL("AND {}").format(_keys_condition(table, [key])), 1):
                    done = _erase(conn, catalog, table, settings, cutoff, [key], secret, journal)
                else:
                    done = Counter()
            result.removed.update(done)
        except (psycopg.errors.IntegrityError, psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled,
                psycopg.errors.DeadlockDetected) as exc:
            entries = result.blocked.setdefault(table.name, [])
            if not any(e["key"] == list(key) for e in entries):     # a later pass tries again: report once
                entries.append({"key": list(key), "why": why_not(exc)})
    result.batches += 1
    if table.name not in result.blocked:
        result.notes.append(f"{table.name}: a batch was refused ({first}) and then went through one by one")
    return keys[-1]


def run_cleanup(conn: psycopg.Connection, target: str, catalog: GdprCatalog, settings: GdprSettings,
                log: Callable[[str], None] = lambda line: None, journal: Journal | None = None) -> CleanupResult:
    """Remove every eligible row of every soft-deletable table (the subject table first), batch by
    batch. ``conn`` must be in autocommit mode: each batch is its own transaction. ``journal``
    records each batch before it commits (the ledger and the audit trail: service.py)."""
    secret = hash_secret(settings)          # before anything runs: a missing secret changes nothing
    (now,) = conn.execute("SELECT now()").fetchone()
    result = CleanupResult(target, now - timedelta(days=settings.grace_days), skipped=dict(catalog.skipped))
    for _ in range(MAX_PASSES):
        result.passes += 1
        before = sum(result.removed.values())
        for table in catalog.soft_deletable:
            after = None
            while (after := _batch(conn, catalog, table, settings, result.cutoff, after, result, secret, journal)) is not None:
                log(f"{table.name}: {result.removed[(table.name, 'delete')]} rows removed so far")
                if settings.pause_between_batches_seconds:     # leaves the server to live traffic
                    time.sleep(settings.pause_between_batches_seconds)
        if sum(result.removed.values()) == before:
            break          # a pass that removed nothing: what is left is held by others (or nothing is)
    for table in catalog.soft_deletable:
        (left,) = conn.execute(sql.SQL("SELECT count(*) FROM {t} WHERE {col} < {cutoff}").format(
            t=ident(table.name), col=sql.Identifier(settings.soft_delete_column),
            cutoff=sql.Literal(result.cutoff))).fetchone()
        left -= len(result.blocked.get(table.name, []))
        if left > 0:
            result.still_locked[table.name] = left
    return result
