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


def resign(raw_manifest: dict, cfg) -> bytes:
    """A manifest edited by a test, signed again with the backup key: it simulates a genuine
    record that the dump disagrees with (a table missing, a count or a policy that differs)."""
    from dbops_pipelines import fleet
    from dbops_pipelines.backup.crypto import manifest_mac
    from dbops_pipelines.backup.manifest import BackupManifest

    manifest = BackupManifest.from_json(json.dumps(raw_manifest).encode())
    manifest.mac = manifest_mac(fleet.write_key(cfg), manifest.signed_payload())
    return manifest.to_json()
