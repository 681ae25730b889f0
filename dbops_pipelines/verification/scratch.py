"""Scratch databases for verification: created fresh, always dropped, and leftovers of crashed
runs swept.

While a verification runs it holds a "lease" connection to its scratch database. A scratch
database nobody is connected to, older than a grace period, belongs to a run that died: the
sweep drops it.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from dbops_pipelines.pgtools import connect

PREFIX = "dbops_verify_"
_STAMP = "%Y%m%d%H%M%S"


def scratch_name(target: str, now: datetime) -> str:
    return f"{PREFIX}{target[:40]}_{now.strftime(_STAMP)}"


def with_dbname(dsn: str, dbname: str) -> str:
    return make_conninfo(dsn, dbname=dbname)


def admin_dsn(target_dsn: str, server_dsn: str | None) -> str:
    """Where scratch databases are created: a staging server, or the target's own server."""
    if server_dsn:
        return server_dsn
    return with_dbname(target_dsn, "postgres")


def _created_at(name: str) -> datetime | None:
    m = re.search(r"_(\d{14})$", name)
    return datetime.strptime(m[1], _STAMP).replace(tzinfo=timezone.utc) if m else None


def sweep_stale(admin: str, target: str, now: datetime, grace: timedelta = timedelta(minutes=10)) -> list[str]:
    """Drop this target's scratch databases that nobody holds and that are past the grace period."""
    dropped = []
    with connect(admin, f"verification server for {target}", retries=1, autocommit=True) as conn:
        rows = conn.execute(
            """SELECT d.datname FROM pg_database d
               WHERE d.datname LIKE %s
                 AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)""",
            (f"{PREFIX}{target[:40]}\\_%",),
        ).fetchall()
        for (name,) in rows:
            created = _created_at(name)
            if created is not None and now - created >= grace:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
                dropped.append(name)
    return dropped


class ScratchDatabase:
    """``with ScratchDatabase(admin, name) as dsn:`` creates it, holds the lease, drops it on exit
    whatever happened inside (success, failure, or the run being cancelled)."""

    def __init__(self, admin: str, name: str):
        self.admin = admin
        self.name = name
        self._lease: psycopg.Connection | None = None

    def __enter__(self) -> str:
        with connect(self.admin, "verification server", retries=1, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(self.name)))
        dsn = with_dbname(self.admin, self.name)
        self._lease = psycopg.connect(dsn, application_name="dbops verification lease")
        return dsn

    def __exit__(self, *exc) -> None:
        if self._lease is not None:
            self._lease.close()
        with connect(self.admin, "verification server", retries=2, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name)))


def server_label(dsn: str) -> str:
    info = conninfo_to_dict(dsn)
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}"
