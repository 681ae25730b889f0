"""Deterministic sample database of a multi-tenant procurement application.

Used by the demo, the tests and the benchmarks: a schema with the usual features a
PostgreSQL-operations tool meets (primary and foreign keys, check constraints, secondary
indexes, identity columns, jsonb, inet, row-level security enabled and forced, soft-deleted
users for GDPR cleanup) filled with realistic-looking text that compresses roughly 3x with
zstd at low levels.

API:

* `SAMPLE_TABLES`: schema-qualified names of every table, parents before children.
* `create_schema(conn)`: all the DDL (tables, keys, indexes, RLS). `build_sample_database`
  instead runs `create_tables` before loading and `create_constraints` after, which is faster.
* `seed(conn, rows, seed=42, progress=None)`: COPY the data in; returns exact row counts.
* `build_sample_database(dsn, rows, seed=42)`: create, seed, ANALYZE, commit; returns counts.
* `python -m dbops_pipelines.sample.appdb --dsn DSN --rows N`.

Sizes for `rows` = R: requisitions R, request_items ~3R, audit_events 2R, tenants
max(3, R/1000), users R/10 (5% soft-deleted, deleted_at spread over the 90 days before the
anchor), user_roles ~1.5 per user, vendors R/20, contracts R/10, roles 8. Per R the data
(COPY text, ~ a pg_dump -Z0) is ~1.6 kB and the database ~2.7 kB with indexes: R=750k gives a
~1.2 GB dump, R=450k a ~1.2 GB database. The dump compresses ~3.1x with zstd -1, ~3.5x with -3.

All timestamps are relative to an anchor (default `DEFAULT_ANCHOR`, a fixed date, so the
same seed always gives byte-identical data); pass `anchor=` to place the data relative to
another moment, e.g. today, when soft-delete ages matter.

Data is generated chunk by chunk, each chunk with its own `random.Random` derived from the
seed, table and chunk number, and streamed to COPY: memory use does not grow with `rows`.
Seed as the tables' owner (or a superuser); with the full schema from `create_schema`, FORCEd
RLS would hide the rows from a non-superuser owner, so load before `create_constraints`.

This module is the public API and the loader; the rest of the package is internal:
`schema` (table names, DDL, COPY columns), `vocabulary` (word lists, from `words/*.txt`,
and weighted populations), `fake` (batched randomness, timestamps, small texts), `layout`
(row counts, tenants, time line), `generate` (row generators, `generate`) and `activity`
(the generators of the three big tables).
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from typing import Callable

import psycopg
from psycopg import sql

from dbops_pipelines.sample.generate import generate, table_blocks
from dbops_pipelines.sample.layout import DEFAULT_ANCHOR, Layout
from dbops_pipelines.sample.schema import (
    COPY_COLUMNS,
    IDENTITY_TABLES,
    RLS_TABLES,
    SAMPLE_TABLES,
    create_constraints,
    create_schema,
    create_tables,
)

__all__ = [
    "DEFAULT_ANCHOR",
    "RLS_TABLES",
    "SAMPLE_TABLES",
    "build_sample_database",
    "create_constraints",
    "create_schema",
    "create_tables",
    "generate",
    "main",
    "seed",
]


def _qualified(name: str) -> sql.Composable:
    schema, table = name.split(".", 1)
    return sql.Identifier(schema, table)


def _seed(conn: psycopg.Connection, rows: int, seed: int, progress: Callable[[str, int], None] | None,
          anchor: datetime, freeze: bool) -> tuple[dict[str, int], int]:
    lay = Layout(rows, seed, anchor)
    counts: dict[str, int] = {}
    nbytes = 0
    with conn.cursor() as cur:
        for table in SAMPLE_TABLES:
            cols = sql.SQL(", ").join(map(sql.Identifier, COPY_COLUMNS[table]))
            stmt = sql.SQL("COPY {} ({}) FROM STDIN{}").format(
                _qualified(table), cols, sql.SQL(" WITH (FREEZE)") if freeze else sql.SQL(""))
            done = 0
            with cur.copy(stmt) as copy:
                pending: list[bytes] = []
                size = 0
                for block, n in table_blocks(lay, table):
                    data = block.encode()
                    pending.append(data)
                    size += len(data)
                    done += n
                    if size >= 1 << 20:
                        copy.write(b"".join(pending))
                        nbytes += size
                        pending, size = [], 0
                        if progress is not None:
                            progress(table, done)
                if pending:
                    copy.write(b"".join(pending))
                    nbytes += size
            counts[table] = done
            if progress is not None:
                progress(table, done)
        for table in IDENTITY_TABLES:
            if counts.get(table):
                cur.execute(
                    sql.SQL("SELECT setval(pg_get_serial_sequence({}, 'id'), (SELECT max(id) FROM {}))").format(
                        sql.Literal(table), _qualified(table)))
    return counts, nbytes


def seed(conn: psycopg.Connection, rows: int, seed: int = 42,
         progress: Callable[[str, int], None] | None = None, *,
         anchor: datetime = DEFAULT_ANCHOR) -> dict[str, int]:
    """Load the sample data into the (empty) tables; returns exact row counts per table.

    Runs in the connection's current transaction and does not commit. `progress(table,
    rows_done)` is called about every MB of data and once at the end of each table.
    """
    counts, _ = _seed(conn, rows, seed, progress, anchor, freeze=False)
    return counts


def build_sample_database(dsn: str, rows: int, seed: int = 42, *,
                          anchor: datetime = DEFAULT_ANCHOR,
                          progress: Callable[[str, int], None] | None = None,
                          stats: dict | None = None) -> dict[str, int]:
    """Create the schema in the empty database at `dsn`, load it, ANALYZE it; returns counts.

    Everything is one transaction (tables created in it are loaded with COPY FREEZE). If
    `stats` is given, it receives 'bytes' (COPY data sent) and 'seconds' per phase.
    """
    t0 = time.monotonic()
    with psycopg.connect(dsn) as conn:
        conn.execute("SET LOCAL synchronous_commit = off")
        conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
        create_tables(conn)
        t1 = time.monotonic()
        counts, nbytes = _seed(conn, rows, seed, progress, anchor, freeze=True)
        t2 = time.monotonic()
        create_constraints(conn)
        t3 = time.monotonic()
        conn.commit()
        conn.autocommit = True
        conn.execute("ANALYZE " + ", ".join(SAMPLE_TABLES))
        t4 = time.monotonic()
    if stats is not None:
        stats.update(bytes=nbytes, seconds_load=t2 - t1, seconds_constraints=t3 - t2,
                     seconds_analyze=t4 - t3, seconds_total=t4 - t0)
    return counts


def _parse_anchor(text: str) -> datetime:
    if text == "today":
        return datetime.now(timezone.utc)
    dt = datetime.fromisoformat(text)
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dbops_pipelines.sample.appdb",
        description="Build the sample procurement database into an empty PostgreSQL database.")
    parser.add_argument("--dsn", required=True, help="libpq connection string of an empty database")
    parser.add_argument("--rows", type=int, default=10000, help="rows in the biggest tables (default 10000)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--anchor", default=DEFAULT_ANCHOR.date().isoformat(),
                        help="date the data ends at (ISO date/time, or 'today'); default %(default)s")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)

    last = [time.monotonic()]

    def progress(table: str, done: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 2.0:
            last[0] = now
            print(f"  {table}: {done} rows", file=sys.stderr, flush=True)

    stats: dict = {}
    counts = build_sample_database(args.dsn, args.rows, args.seed, anchor=_parse_anchor(args.anchor),
                                   progress=None if args.quiet else progress, stats=stats)
    width = max(map(len, counts))
    for table, n in counts.items():
        print(f"{table:<{width}}  {n:>12,}")
    print(f"{'total':<{width}}  {sum(counts.values()):>12,}")
    mb = stats["bytes"] / 1e6
    print(f"generated {mb:.1f} MB in {stats['seconds_load']:.1f} s load "
          f"({mb / max(stats['seconds_load'], 1e-9):.1f} MB/s), "
          f"{stats['seconds_constraints']:.1f} s keys/indexes, {stats['seconds_analyze']:.1f} s analyze, "
          f"{stats['seconds_total']:.1f} s total")
    return 0


if __name__ == "__main__":
    sys.exit(main())
