"""PostgreSQL client programs (pg_dump, pg_restore) and connections: finding the right binary,
checking its version against the server and the archive, and running it.

``PgProcess`` is the one process runner for pg_dump/pg_restore; backup and restore both use it:
stderr captured (redacted) and surfaced, the child stopped and reaped whenever its block is
left by an exception (KeyboardInterrupt and SIGTERM's Terminated included), its workers too.
``private_tempdir`` is the one place a decrypted dump may touch disk, and it is always removed.
Passwords never reach a child's command line: ``password_to_env`` moves them to PGPASSWORD.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from dbops_pipelines.redact import redact
from dbops_pipelines.errors import BackupFailed, DatabaseUnreachable, DbopsError
from dbops_pipelines.retry import retry_call

DEBIAN_PG_ROOT = Path("/usr/lib/postgresql")


_BIN_HINT = "set defaults.pg_bin_dir (or DBOPS_PG_BIN) to a PostgreSQL client bin directory"


def binary_version(path: str | Path, error: type[DbopsError] = BackupFailed) -> tuple[int, int]:
    try:
        out = subprocess.run([str(path), "--version"], capture_output=True, text=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise error(f"cannot run {path} --version: {exc}", _BIN_HINT) from None
    m = re.search(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?", out)
    if not m:
        raise error(f"cannot read the version of {path} from {out!r}", _BIN_HINT)
    return int(m[1]), int(m[2] or 0)


def find_binary(name: str, server_major: int | None = None, bin_dir: str | None = None,
                error: type[DbopsError] = BackupFailed) -> Path:
    """Pick ``name`` from ``bin_dir`` if given, else the Debian install matching the server's
    major version (or the newest newer one), else the one on PATH."""
    bin_dir = bin_dir or os.environ.get("DBOPS_PG_BIN")
    if bin_dir:
        candidate = Path(bin_dir) / name
        if not candidate.exists():
            raise error(f"{candidate} does not exist", "fix defaults.pg_bin_dir / DBOPS_PG_BIN")
        return candidate
    if DEBIAN_PG_ROOT.is_dir():
        versions = sorted((int(p.name) for p in DEBIAN_PG_ROOT.iterdir() if p.name.isdigit() and (p / "bin" / name).exists()))
        usable = [v for v in versions if server_major is None or v >= server_major]
        if usable:
            return DEBIAN_PG_ROOT / str(usable[0] if server_major else usable[-1]) / "bin" / name
    found = shutil.which(name)
    if not found:
        raise error(f"{name} not found", "install the PostgreSQL client (apt-get install postgresql-client) or set defaults.pg_bin_dir")
    return Path(found)


def pick_client(name: str, needs: dict[str, int], bin_dir: str | None = None,
                error: type[DbopsError] = BackupFailed) -> tuple[Path, tuple[int, int]]:
    """The ``name`` program whose major version is at least each of ``needs`` ({what needs it:
    major}), with its version; ``error`` says which one is missing and how to get it.

    Majors only: the archive format and the SQL a client emits change with major releases."""
    need = max(needs.values())
    path = find_binary(name, need, bin_dir, error)
    version = binary_version(path, error)
    for what, major in needs.items():
        if version[0] < major:
            raise error(
                f"{name} {version[0]}.{version[1]} ({path}) is older than {what}: it must be version {major} or newer",
                f"install the PostgreSQL {need} client programs (apt-get install postgresql-client-{need}) "
                "or point defaults.pg_bin_dir (DBOPS_PG_BIN) at them",
            )
    return path, version


def check_client_version(name: str, client: tuple[int, int], server_major: int) -> None:
    """pg_dump refuses servers newer than itself, but only after connecting; say why up front."""
    if client[0] < server_major:
        raise BackupFailed(
            f"{name} {client[0]}.{client[1]} is older than the server (PostgreSQL {server_major})",
            f"install the PostgreSQL {server_major} client programs (apt-get install postgresql-client-{server_major}) "
            "or point defaults.pg_bin_dir at them",
        )


_DSN_HINT = ("write postgresql://user@host:port/dbname or 'host=... port=... dbname=...' (quote values with "
             "spaces: password='a b'); better, leave the password out and export PGPASSWORD")


class InvalidDsn(ValueError):
    """A connection string libpq refuses, or whose port is not a port. Its text is safe to show:
    never the password, never a part of the string libpq quotes. ``port`` is the bad port value
    (the only part of the string it names), None for a syntax error."""

    def __init__(self, reason: str, port: str | None = None):
        super().__init__(reason)
        self.reason, self.port = reason, port


def _libpq_reason(message: str) -> str:
    """libpq's reason for refusing a connection string, without the parts of the string it quotes
    (``missing "=" after "s3cret"``, ``... in URI: "postgresql://..."``): a word it quotes may
    be a password written without its key. Single punctuation marks ("=", "]") stay."""
    first = message.strip().splitlines()[0] if message.strip() else "no reason given"
    return re.sub(r'"([^"]*)"', lambda m: m[0] if len(m[1]) == 1 and not m[1].isalnum() else "[withheld]", first)


def dsn_fields(dsn: str) -> dict[str, str]:
    """The one DSN parser: conninfo_to_dict (URL or key=value form), plus the port check libpq
    only makes when connecting; raises InvalidDsn. Whenever the string carries a password,
    libpq's reason is withheld altogether (its text can hold a fragment of it even unquoted)."""
    try:
        info = conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        raise InvalidDsn("libpq's details are withheld: they can quote part of the password" if redact(dsn) != dsn
                         else f"libpq cannot parse it: {redact(_libpq_reason(str(exc)))}") from None
    ports = str(info.get("port") or "")
    if not all(not p or (p.isdigit() and 0 < int(p) < 65536) for p in ports.split(",")):
        raise InvalidDsn(f"port {redact(ports)!r} is not a number from 1 to 65535", ports)
    return info


def parse_dsn(dsn: str, what: str, error: type[DbopsError] = BackupFailed) -> dict[str, str]:
    """``dsn_fields``, failing with ``error`` that names ``what`` the string is (e.g. "--to")."""
    try:
        return dsn_fields(dsn)
    except InvalidDsn as exc:
        raise error(f"{what} is not a valid connection string ({exc.reason})", _DSN_HINT) from None


def password_to_env(dsn: str, error: type[DbopsError] = BackupFailed) -> tuple[str, dict[str, str]]:
    """(the DSN without its password, the environment for a child with PGPASSWORD set). A
    password goes to pg_dump/pg_restore through the environment, never on the command line,
    where any local user can read it in the process list."""
    info = parse_dsn(dsn, "the connection string", error)
    password = info.pop("password", None)
    if password is None:
        return dsn, dict(os.environ)
    return make_conninfo("", **info), {**os.environ, "PGPASSWORD": password}


def _login_refused(exc: Exception) -> bool:
    return "authentication failed" in str(exc) or "no password supplied" in str(exc)


def connect(dsn: str, label: str, retries: int = 3, backoff: float = 1.0,
            error: type[DbopsError] = BackupFailed, application_name: str = "dbops", **kwargs) -> psycopg.Connection:
    """Connect with ``retries`` retries and exponential backoff (retry.py); transient outages
    and restarts are common. ``error`` is raised for a malformed DSN or a refused login: no
    retry helps either, and retrying a wrong password only locks accounts and delays the message."""
    parse_dsn(dsn, f"the DSN of {label}", error)  # psycopg's own message could quote the password
    try:
        return retry_call(
            lambda: psycopg.connect(dsn, connect_timeout=10, application_name=application_name, **kwargs),
            attempts=retries + 1, backoff_seconds=backoff,
            retry_on=(psycopg.OperationalError,), give_up_on=_login_refused,
        )
    except psycopg.OperationalError as exc:
        if _login_refused(exc):
            raise error(
                f"{label} ({redact(dsn)}) refused the login: {redact(str(exc).strip())}",
                f"check the user and the password (PGPASSWORD or PGPASSFILE) for {label}",
            ) from None
        raise DatabaseUnreachable(
            f"cannot connect to {label} ({redact(dsn)}) after {retries + 1} attempt{'s' if retries else ''}: "
            f"{redact(str(exc).strip())}",
            "check that the server is up and reachable, and the user/password (PGPASSWORD or PGPASSFILE) are right",
        ) from None


class StderrCollector:
    """Drains a process's stderr in a thread (so it can never block the process), forwards each
    line to ``on_line`` and keeps the last lines for error messages."""

    def __init__(self, stream, on_line: Callable[[str], None] | None = None, keep: int = 50):
        self.lines: deque[str] = deque(maxlen=keep)
        self._on_line = on_line
        self._thread = threading.Thread(target=self._drain, args=(stream,), daemon=True)
        self._thread.start()

    def _drain(self, stream) -> None:
        for raw in iter(stream.readline, b""):
            line = redact(raw.decode("utf-8", "replace").rstrip())
            if line:
                self.lines.append(line)
                if self._on_line:
                    self._on_line(line)
        stream.close()

    def text(self) -> str:
        self._thread.join(timeout=5)
        return "\n".join(self.lines)


def enlarge_pipe(fd: int, size: int = 1 << 20) -> None:
    """Bigger pipe buffers mean fewer context switches between pg_dump and us (Linux only)."""
    try:
        import fcntl

        fcntl.fcntl(fd, 1031, size)  # F_SETPIPE_SZ
    except (ImportError, OSError):
        pass


def _unstoppable(step: Callable[[], object]) -> None:
    """Run a clean-up step to its end even if interrupted again meanwhile (a second Ctrl-C, or
    Dagster's DagsterExecutionInterruptedError, which is no KeyboardInterrupt): half a clean-up
    (a child still running, half a decrypted dump on disk) is worse than a moment's wait."""
    while True:
        try:
            step()
            return
        except Exception:
            raise
        except BaseException:  # noqa: BLE001 - interrupts only: errors above propagate
            continue


class PgProcess:
    """pg_dump or pg_restore, running. ``with PgProcess(cmd, ...) as proc:`` - leaving the block
    by an exception stops the program (see ``stop``); leaving it normally expects the caller to
    have waited, and stops a program still running all the same.

    The program runs in its own process group: pg_restore --jobs forks one worker per job, and
    stopping the leader alone would leave them writing to the destination. A terminal's Ctrl-C
    then reaches only us, and we stop the group ourselves, in order.
    """

    def __init__(self, cmd: list[str], *, env: dict[str, str] | None = None, stdin: bool = False,
                 stdout: bool = False, on_line: Callable[[str], None] | None = None,
                 error: type[DbopsError] = BackupFailed):
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                         stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, env=env, process_group=0)
        except OSError as exc:
            raise error(f"cannot start {cmd[0]}: {exc}", _BIN_HINT) from None
        self.pid = self.proc.pid
        self.stdin = self.proc.stdin
        self.stdout = self.proc.stdout
        self.messages = StderrCollector(self.proc.stderr, on_line)  # .text(): its last lines, redacted

    def wait(self) -> int:
        return self.proc.wait()

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to the group first: pg_dump and pg_restore then send the server a cancel for
        each of their connections, so no COPY or CREATE INDEX runs on after them. SIGKILL to
        the group if the leader has not exited within ``grace`` seconds, and to any worker left."""
        stopping = False

        def step() -> None:
            nonlocal stopping
            if not stopping and self.proc.poll() is None:
                self._signal(signal.SIGTERM)
                stopping = True  # from here on, a retry (after another Ctrl-C) goes straight to SIGKILL
                try:
                    self.proc.wait(grace)
                except subprocess.TimeoutExpired:
                    pass
            if stopping:
                self._signal(signal.SIGKILL)
            self.proc.wait()

        _unstoppable(step)

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass  # the group is gone already

    def __enter__(self) -> PgProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the program if it still runs, reap it, and finish reading its stderr."""
        # Stop before closing stdin: closing flushes, which blocks while a busy pg_restore
        # is not reading, and it would go on writing to the destination meanwhile.
        self.stop()
        if self.stdin and not self.stdin.closed:
            try:
                self.stdin.close()
            except BrokenPipeError:
                pass  # unsent bytes of a program that is gone
        if self.stdout:
            self.stdout.close()
        self.messages.text()  # stderr fully read: the last lines are complete for the caller


@contextmanager
def private_tempdir(prefix: str) -> Iterator[Path]:
    """A directory only we can read (0700), removed on leaving the block however it is left: it
    may hold a decrypted dump."""
    path: Path | None = None
    try:
        path = Path(tempfile.mkdtemp(prefix=prefix))
        yield path
    finally:
        if path is not None:
            _unstoppable(lambda: shutil.rmtree(path, ignore_errors=True))
