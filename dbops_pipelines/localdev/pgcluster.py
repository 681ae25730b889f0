"""A throwaway PostgreSQL 15 cluster for tests and local development.

initdb refuses to run as root, so when we are root every server command runs
as the `postgres` OS user through `runuser`, and the directories it writes to
are chowned to that user. As any other user the commands run directly.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
from pathlib import Path

import psycopg
from psycopg import sql

from dbops_pipelines.localdev.ports import free_port, log_tail

DEFAULT_PG_BIN = "/usr/lib/postgresql/15/bin"
PG_OS_USER = "postgres"
# Our settings live in their own file, rewritten on every start(), so a new
# port or fsync choice takes effect without editing initdb's postgresql.conf.
LOCAL_CONF = "dbops_local.conf"


class PostgresNotInstalledError(RuntimeError):
    """The PostgreSQL server binaries are not where we look for them."""


class ClusterStartError(RuntimeError):
    """initdb or the server failed; the message carries the server log tail."""


class LocalCluster:
    """One PostgreSQL cluster under `base_dir`, listening on 127.0.0.1:`port`."""

    host = "127.0.0.1"

    def __init__(self, base_dir: Path, port: int | None = None, fsync: bool = False, extra_conf: str = "",
                 env: dict[str, str] | None = None):
        # extra_conf: more postgresql.conf lines (archive_mode, archive_command...), written on
        # every start; env: extra environment of the server process (e.g. what archive_command needs).
        self.extra_conf = extra_conf
        self.env = dict(env or {})
        self.base_dir = Path(base_dir).resolve()
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "socket"
        self.log_file = self.base_dir / "postgres.log"
        self.fsync = fsync
        self._port = port if port is not None else free_port()
        self._as_root = os.geteuid() == 0

    # -- properties ---------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def bin_dir(self) -> Path:
        return Path(os.environ.get("DBOPS_PG_BIN", DEFAULT_PG_BIN))

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@{self.host}:{self.port}/{dbname}"

    # -- lifecycle ----------------------------------------------------------

    def init(self) -> None:
        """Create the cluster with initdb unless it already exists."""
        self._check_binaries()
        self._prepare_dirs()
        if (self.data_dir / "PG_VERSION").exists():
            return
        result = self._run(
            "initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
            "--encoding=UTF8", "--locale=C.UTF-8", "--no-instructions",
        )
        if result.returncode != 0:
            raise ClusterStartError(f"initdb failed in {self.data_dir}:\n{result.stdout}")
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write(f"\ninclude_if_exists '{LOCAL_CONF}'\n")

    def start(self, timeout: int = 60) -> None:
        """Start the server (initialising it first if needed) and wait until it accepts connections."""
        self.init()
        if self.is_running():
            return
        self._write_local_conf()
        result = self._run(
            "pg_ctl", "start", "-w", "-t", str(timeout),
            "-D", str(self.data_dir), "-l", str(self.log_file), env=self.env,
        )
        if result.returncode != 0 or not self.is_running():
            raise ClusterStartError(
                f"PostgreSQL failed to start on port {self.port} (pg_ctl said: "
                f"{result.stdout.strip()}). Last lines of {self.log_file}:\n{log_tail(self.log_file)}"
            )

    def stop(self) -> None:
        """Stop the server with a fast shutdown; a no-op if it is not running."""
        if not (self.data_dir / "PG_VERSION").exists() or not self.is_running():
            return
        self._run("pg_ctl", "stop", "-m", "fast", "-w", "-D", str(self.data_dir))

    def is_running(self) -> bool:
        if not (self.data_dir / "PG_VERSION").exists() or not self._binary("pg_ctl").exists():
            return False
        # pg_ctl status exits 0 when running, 3 when not, 4 when no valid data dir.
        return self._run("pg_ctl", "status", "-D", str(self.data_dir)).returncode == 0

    # -- SQL helpers ----------------------------------------------------------

    def execute(self, query: str | sql.Composable, dbname: str = "postgres", params=None) -> list[tuple] | None:
        """Run one statement in autocommit mode; return its rows, or None if it returns none."""
        with psycopg.connect(self.dsn(dbname), autocommit=True, connect_timeout=10) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description is not None else None

    def create_database(self, name: str) -> None:
        self.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def drop_database(self, name: str, force: bool = True) -> None:
        """Drop `name` if it exists; FORCE disconnects sessions still attached to it."""
        stmt = "DROP DATABASE IF EXISTS {} WITH (FORCE)" if force else "DROP DATABASE IF EXISTS {}"
        self.execute(sql.SQL(stmt).format(sql.Identifier(name)))

    # -- internals ------------------------------------------------------------

    def _binary(self, name: str) -> Path:
        return self.bin_dir / name

    def _check_binaries(self) -> None:
        missing = [n for n in ("initdb", "pg_ctl", "postgres") if not self._binary(n).exists()]
        if missing:
            raise PostgresNotInstalledError(
                f"PostgreSQL server binaries {missing} not found in {self.bin_dir}: "
                "install postgresql-15 server binaries: apt-get install postgresql-15 "
                "(or point DBOPS_PG_BIN at a directory that has initdb and pg_ctl)"
            )
        if self._as_root:
            try:
                pwd.getpwnam(PG_OS_USER)
            except KeyError:
                raise PostgresNotInstalledError(
                    f"running as root but there is no '{PG_OS_USER}' OS user to run the server as: "
                    "apt-get install postgresql-15 creates it"
                ) from None

    def _run(self, tool: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        cmd = [str(self._binary(tool)), *args]
        if self._as_root:
            cmd = ["runuser", "-u", PG_OS_USER, "--", *cmd]
        # cwd=base_dir: the postgres user may not be allowed into the caller's cwd.
        return subprocess.run(
            cmd, cwd=self.base_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, text=True, env={**os.environ, **env} if env else None,
        )

    def _prepare_dirs(self) -> None:
        self.base_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        for d in (self.data_dir, self.socket_dir):
            d.mkdir(mode=0o700, exist_ok=True)
        self.log_file.touch(exist_ok=True)
        if not self._as_root:
            return
        pg = pwd.getpwnam(PG_OS_USER)
        for p in (self.data_dir, self.socket_dir, self.log_file):
            os.chown(p, pg.pw_uid, pg.pw_gid)
        self._make_reachable(pg.pw_uid)

    def _make_reachable(self, uid: int) -> None:
        """Give `others` search (x, not read) permission on base_dir and its ancestors.

        Root-owned 0700 dirs such as pytest's /tmp/pytest-of-root would otherwise stop
        the postgres user from reaching its data directory. Search permission only lets
        it pass through a directory by name; it cannot list its contents.
        """
        for d in [self.base_dir, *self.base_dir.parents]:
            st = d.stat()
            if st.st_uid != uid and not st.st_mode & stat.S_IXOTH:
                os.chmod(d, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)

    def _write_local_conf(self) -> None:
        conf = f"""\
# Written by dbops_pipelines.localdev.pgcluster on every start; edits are lost.
port = {self.port}
listen_addresses = '{self.host}'
unix_socket_directories = '{self.socket_dir}'
shared_preload_libraries = 'pg_stat_statements'
wal_level = replica
fsync = {'on' if self.fsync else 'off'}
{self.extra_conf}
"""
        path = self.data_dir / LOCAL_CONF
        path.write_text(conf)
        if self._as_root:
            pg = pwd.getpwnam(PG_OS_USER)
            os.chown(path, pg.pw_uid, pg.pw_gid)

    def __repr__(self) -> str:
        return f"LocalCluster(base_dir={str(self.base_dir)!r}, port={self.port})"
