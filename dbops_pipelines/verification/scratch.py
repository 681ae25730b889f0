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
                try:
                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
                except psycopg.errors.InsufficientPrivilege:
                    continue  # another role's leftover: its own verifications sweep it, not this one
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
        created = False  # CREATE sent: from then on it may exist, even if we never hear back
        try:
            with connect(self.admin, "verification server", retries=1, autocommit=True) as conn:
                created = True
                conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(self.name)))
            dsn = with_dbname(self.admin, self.name)
            self._lease = psycopg.connect(dsn, application_name="dbops verification lease")
            return dsn
        except psycopg.errors.DuplicateDatabase:
            raise  # another run's database: not ours to drop
        except BaseException as exc:
            # Failing or interrupted (Ctrl-C, SIGTERM) here, the caller's `with` never reaches
            # __exit__: drop what CREATE may already have committed.
            if created:
                self._drop_quietly(exc)
            raise

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._lease is not None:
            self._lease.close()
        if exc is None:
            self._drop()
        else:
            self._drop_quietly(exc)

    def _drop(self, retries: int = 2) -> None:
        with connect(self.admin, "verification server", retries=retries, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name)))

    def _drop_quietly(self, cause: BaseException) -> None:
        """Drop while ``cause`` is propagating: a failure to drop must not replace it (the
        operator needs the first error). Nobody holds the lease any more, so sweep_stale drops
        the database on the next run."""
        try:
            self._drop(retries=1)
        except BaseException:  # noqa: BLE001 - a failed drop, or a second interrupt: the cause goes on
            cause.add_note(f"scratch database {self.name} could not be dropped now; the next verification sweeps it")


def server_label(dsn: str) -> str:
    info = conninfo_to_dict(dsn)
    return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}"
