"""Before a base backup: what the server is, and everything pg_basebackup would fail on later,
said clearly now; the hints for pg_basebackup's own failures."""

from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg

from dbops_pipelines.errors import BackupFailed

MIN_SERVER_MAJOR = 13          # backup_manifest (and pg_verifybackup) came with PostgreSQL 13


@dataclass(frozen=True)
class Server:
    version: str
    major: int
    system_identifier: int
    in_recovery: bool
    clock_offset: float              # server clock minus ours, seconds
    size_hint: int | None


def preflight(conn: psycopg.Connection, target: str) -> Server:
    """Everything pg_basebackup would fail on later, said clearly now: the role's privilege, the
    server's settings, tablespaces (which `-D -` cannot write)."""
    conn.autocommit = True
    before = time.time()
    row = conn.execute(
        "SELECT current_user, r.rolreplication, r.rolsuper, current_setting('wal_level'), "
        "current_setting('max_wal_senders')::int, current_setting('server_version'), "
        "current_setting('server_version_num')::int, (SELECT system_identifier FROM pg_control_system()), "
        "pg_is_in_recovery(), extract(epoch FROM clock_timestamp())::float8 "
        "FROM pg_roles r WHERE r.rolname = current_user").fetchone()
    after = time.time()
    role, replication, superuser, wal_level, senders, version, version_num, sysid, in_recovery, server_now = row
    major = version_num // 10000
    if major < MIN_SERVER_MAJOR:
        raise BackupFailed(f"{target} runs PostgreSQL {version}; base backups need PostgreSQL {MIN_SERVER_MAJOR} or newer "
                           "(backup_manifest and pg_verifybackup)", "upgrade the server, or keep relying on logical backups for it")
    if not (replication or superuser):
        raise BackupFailed(
            f"role {role!r} of {target} lacks the REPLICATION privilege, which pg_basebackup needs",
            f"as a superuser: ALTER ROLE {role} REPLICATION; and allow it in pg_hba.conf "
            f"(host replication {role} <dbops host>/32 scram-sha-256), then SELECT pg_reload_conf()")
    if wal_level == "minimal":
        raise BackupFailed(f"{target} runs with wal_level = minimal, which cannot take base backups",
                           "set wal_level = replica (or logical) in postgresql.conf and restart the server")
    if senders < 1:
        raise BackupFailed(f"{target} has max_wal_senders = 0; pg_basebackup needs a WAL sender",
                           "set max_wal_senders to 10 (the default) in postgresql.conf and restart the server")
    spaces = conn.execute("SELECT spcname, pg_tablespace_location(oid) FROM pg_tablespace "
                          "WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY 1").fetchall()
    if spaces:
        listed = ", ".join(f"{name} ({loc})" for name, loc in spaces)
        raise BackupFailed(
            f"the cluster of {target} has tablespaces besides the default ones: {listed}; pg_basebackup cannot stream "
            "them into one archive (-D - writes a single tablespace), so no base backup was taken",
            "move their objects to pg_default (ALTER TABLE/INDEX ... SET TABLESPACE pg_default, ALTER DATABASE ... SET "
            "TABLESPACE) and drop them, or back this cluster up with a tool that copies tablespaces")
    try:
        size_hint = conn.execute("SELECT sum(pg_database_size(oid))::bigint FROM pg_database").fetchone()[0]
    except psycopg.Error:
        size_hint = None   # a role that may not see every database's size: the store copes without a hint
    return Server(version, major, int(sysid), bool(in_recovery), server_now - (before + after) / 2, size_hint)


_FAILURES = (
    ("must be superuser or replication role", "give the role REPLICATION (ALTER ROLE <role> REPLICATION) and allow it in pg_hba.conf"),
    ("no pg_hba.conf entry for replication", "add a line to pg_hba.conf: host replication <role> <dbops host>/32 scram-sha-256, "
                                             "then SELECT pg_reload_conf()"),
    ("max_wal_senders", "raise max_wal_senders (or wait for other base backups and standbys to finish) and run again"),
    ("remaining connection slots", "the server is out of connection slots: retry later or raise max_connections"),
    ("single tablespace", "the cluster has tablespaces: see docs/pitr.md#base-backups"),
    ("incompatible server version", "install the pg_basebackup of the server's major version (postgresql-client-N) "
                                    "or set defaults.pg_bin_dir"),
    ("password authentication failed", "check the password of the target's role (PGPASSWORD or PGPASSFILE)"),
)


def failure_hint(messages: str) -> str:
    for needle, hint in _FAILURES:
        if needle in messages:
            return hint
    return "fix the cause above and run the base backup again"
