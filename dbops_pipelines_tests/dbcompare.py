"""Test helper: compare databases table by table, by content, not just by counts."""

from __future__ import annotations

import json

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


def tamper_manifest(cfg, manifest, change) -> None:
    """Edit a stored manifest's body and seal it again with the backup key: it simulates a genuine
    record that the dump disagrees with (a table missing, a count or a policy that differs)."""
    from dbops_pipelines.backup.manifest import BackupManifest, manifest_key, read_manifest, seal_manifest
    from dbops_pipelines.context import FleetContext

    ctx = FleetContext(cfg)
    key = manifest_key(manifest.target, manifest.backup_id)
    current = read_manifest(ctx.store.get_bytes(key), ctx.read_keys, manifest.target, manifest.backup_id)
    raw = json.loads(current.body())
    change(raw)
    edited = BackupManifest.from_body(json.dumps(raw).encode())
    ctx.store.put_bytes(key, seal_manifest(edited, ctx.write_key), overwrite=True)
