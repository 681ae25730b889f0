"""Test helper: compare databases table by table, by content, not just by counts."""

from __future__ import annotations

import psycopg
from psycopg import sql

from dbops_pipelines.backup.snapshot import schema_fingerprint, split_table, user_tables


def table_digests(dsn: str) -> dict[str, tuple[int, str]]:
    """(row count, md5 of all rows in a stable order) for every user table."""
    out = {}
    with psycopg.connect(dsn) as conn:
        for name in user_tables(conn):
            schema, table = split_table(name)
            ident = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
            q = sql.SQL("SELECT count(*), coalesce(md5(string_agg(r::text, E'\\n' ORDER BY r::text)), '') FROM {} r").format(ident)
            out[name] = tuple(conn.execute(q).fetchone())
    return out


def fingerprint(dsn: str) -> dict:
    with psycopg.connect(dsn) as conn:
        return schema_fingerprint(conn)
