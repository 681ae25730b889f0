"""Scratch databases for verification: created fresh, always dropped, and leftovers of crashed
runs swept.

While a verification runs it holds a "lease" connection to its scratch database. A scratch
database nobody is connected to, older than a grace period, belongs to a run that died: the
sweep drops it.

Names are ``dbops_verify_<target>_<UTC seconds stamp>_<6 random hex>``: the random part keeps two
verifications of one target started in the same second apart, and the whole name stays within
PostgreSQL's 63 bytes (a longer one would be silently truncated, stamp and all). A target name too
long for the room left is shortened and given a hash of its full name. Names of the earlier format,
``dbops_verify_<target[:40]>_<stamp>``, are still recognised and swept.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime, timedelta, timezone

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from dbops_pipelines.errors import DatabaseUnreachable
from dbops_pipelines.config import host_port
from dbops_pipelines.pgtools import connect
from dbops_pipelines.retry import retry_call
from dbops_pipelines.redact import redact

PREFIX = "dbops_verify_"
_STAMP = "%Y%m%d%H%M%S"
MAX_NAME_BYTES = 63                                   # NAMEDATALEN - 1
_TARGET_ROOM = MAX_NAME_BYTES - len(PREFIX) - len("_20260101000000_abcdef")


def _target_part(target: str) -> str:
    """The target as it appears in its scratch names: itself when it fits, else a prefix of it and
    6 hex of its hash (so two long targets sharing a prefix never share scratch names)."""
    if len(target.encode()) <= _TARGET_ROOM:
        return target
    digest = hashlib.sha256(target.encode()).hexdigest()[:6]
    head = target
    while len(head.encode()) > _TARGET_ROOM - 7:
        head = head[:-1]
    return f"{head}_{digest}"


def scratch_name(target: str, now: datetime, suffix: str | None = None) -> str:
    """A fresh scratch database name for ``target``; ``suffix`` (6 hex) defaults to a random one."""
    suffix = secrets.token_hex(3) if suffix is None else suffix
    if not re.fullmatch(r"[0-9a-f]{6}", suffix):
        raise ValueError(f"scratch name suffix must be 6 lower-case hex digits, not {suffix!r}")
    return f"{PREFIX}{_target_part(target)}_{(now.astimezone(timezone.utc) if now.tzinfo else now).strftime(_STAMP)}_{suffix}"


def with_dbname(dsn: str, dbname: str) -> str:
    return make_conninfo(dsn, dbname=dbname)


def admin_dsn(target_dsn: str, server_dsn: str | None) -> str:
    """Where scratch databases are created: a staging server, or the target's own server."""
    if server_dsn:
        return server_dsn
    return with_dbname(target_dsn, "postgres")


STAGING = "staging"                                   # verification.server_dsn, another server
SAME_SERVER = "same_server"                           # the target's own (production) server: warned about
SAME_SERVER_ON_PURPOSE = "same_server_on_purpose"     # the same, declared deliberate: recorded, not warned


def server_role(target_dsn: str, server_dsn: str | None, on_purpose: bool) -> str:
    """Where the restore's load lands. A server_dsn naming the target's own host:port is the same
    server, whatever it is called; different names for one machine cannot be told apart here."""
    if server_dsn and host_port(server_dsn) != host_port(target_dsn):
        return STAGING
    return SAME_SERVER_ON_PURPOSE if on_purpose else SAME_SERVER


def same_server_notice(target: str, server: str, server_dsn: str | None) -> str:
    """The warning of a verification restoring on the target's own server: what it costs and the
    two ways to settle it. ``server`` is a host:port label, never a DSN."""
    where = (f"verification.server_dsn of {target} points at its own production server ({server})" if server_dsn else
             f"restoring into a scratch database on the production server of {target} ({server})")
    return redact(f"{where}: a whole restore's load lands on it; configure verification.server_dsn (a staging server) "
                  "or set verification.same_server_on_purpose: true")


def _created_at(name: str, target: str) -> datetime | None:
    """When ``name`` was created, if it is one of ``target``'s scratch databases (current or earlier
    name format); None for anything else, another target's included."""
    formats = (re.escape(PREFIX + _target_part(target)) + r"_(\d{14})_[0-9a-f]{6}",  # current
               re.escape(PREFIX + target[:40]) + r"_(\d{14})")                    # before the random suffix
    for pattern in formats:
        m = re.fullmatch(pattern, name)
        if m:
            try:
                return datetime.strptime(m[1], _STAMP).replace(tzinfo=timezone.utc)
            except ValueError:
                return None
    return None


def sweep_stale(admin: str, target: str, now: datetime, grace: timedelta = timedelta(minutes=10)) -> list[str]:
    """Drop this target's scratch databases that nobody holds and that are past the grace period.
    Only names of this target's exact format are touched: target `app` never sweeps `app_x`'s."""
    dropped = []
    with connect(admin, f"verification server for {target}", retries=1, autocommit=True) as conn:
        rows = conn.execute(
            """SELECT d.datname FROM pg_database d
               WHERE starts_with(d.datname, %s)
                 AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)""",
            (PREFIX,),
        ).fetchall()
        for (name,) in rows:
            created = _created_at(name, target)
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
        """DROP ... WITH (FORCE), connecting and dropping again after a transient failure (the
        server restarting, the connection lost mid-DROP), ``retries`` times with backoff; a
        refused login is not retried (connect raises it as no DatabaseUnreachable)."""

        def drop() -> None:
            with connect(self.admin, "verification server", retries=0, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name)))

        retry_call(drop, attempts=retries + 1, backoff_seconds=1.0,
                   retry_on=(DatabaseUnreachable, psycopg.OperationalError))

    def _drop_quietly(self, cause: BaseException) -> None:
        """Drop while ``cause`` is propagating: a failure to drop must not replace it (the
        operator needs the first error). Nobody holds the lease any more, so sweep_stale drops
        the database on the next run."""
        try:
            self._drop(retries=1)
        except BaseException:  # noqa: BLE001 - a failed drop, or a second interrupt: the cause goes on
            cause.add_note(f"scratch database {self.name} could not be dropped now; the next verification sweeps it")

