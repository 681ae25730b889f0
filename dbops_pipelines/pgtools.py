"""PostgreSQL client programs (pg_dump, pg_restore) and connections: finding the right binary,
checking its version against the server, and running it with stderr captured.

This is the one process runner for pg_dump/pg_restore; both backup and restore use it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import psycopg

from dbops_pipelines.redact import redact
from dbops_pipelines.errors import BackupFailed, DatabaseUnreachable

DEBIAN_PG_ROOT = Path("/usr/lib/postgresql")


def binary_version(path: str | Path) -> tuple[int, int]:
    out = subprocess.run([str(path), "--version"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?", out)
    if not m:
        raise BackupFailed(f"cannot read the version of {path} from {out!r}", "set defaults.pg_bin_dir to a PostgreSQL client bin directory")
    return int(m[1]), int(m[2] or 0)


def find_binary(name: str, server_major: int | None = None, bin_dir: str | None = None) -> Path:
    """Pick ``name`` from ``bin_dir`` if given, else the Debian install matching the server's
    major version (or the newest newer one), else the one on PATH."""
    bin_dir = bin_dir or os.environ.get("DBOPS_PG_BIN")
    if bin_dir:
        candidate = Path(bin_dir) / name
        if not candidate.exists():
            raise BackupFailed(f"{candidate} does not exist", "fix defaults.pg_bin_dir / DBOPS_PG_BIN")
        return candidate
    if DEBIAN_PG_ROOT.is_dir():
        versions = sorted((int(p.name) for p in DEBIAN_PG_ROOT.iterdir() if p.name.isdigit() and (p / "bin" / name).exists()))
        usable = [v for v in versions if server_major is None or v >= server_major]
        if usable:
            return DEBIAN_PG_ROOT / str(usable[0] if server_major else usable[-1]) / "bin" / name
    found = shutil.which(name)
    if not found:
        raise BackupFailed(f"{name} not found", "install the PostgreSQL client (apt-get install postgresql-client) or set defaults.pg_bin_dir")
    return Path(found)


def check_client_version(name: str, client: tuple[int, int], server_major: int) -> None:
    """pg_dump refuses servers newer than itself, but only after connecting; say why up front."""
    if client[0] < server_major:
        raise BackupFailed(
            f"{name} {client[0]}.{client[1]} is older than the server (PostgreSQL {server_major})",
            f"install the PostgreSQL {server_major} client programs (apt-get install postgresql-client-{server_major}) "
            "or point defaults.pg_bin_dir at them",
        )


def connect(dsn: str, label: str, retries: int = 3, backoff: float = 1.0, **kwargs) -> psycopg.Connection:
    """Connect with retries and exponential backoff; transient outages and restarts are common."""
    last: Exception | None = None
    for attempt in range(retries + 1):
        try:
            return psycopg.connect(dsn, connect_timeout=10, application_name="dbops", **kwargs)
        except psycopg.OperationalError as exc:
            last = exc
            if "authentication failed" in str(exc) or "no password supplied" in str(exc):
                # Retrying a wrong password only locks accounts and delays the real message.
                raise BackupFailed(
                    f"{label} ({redact(dsn)}) refused the login: {redact(str(exc).strip())}",
                    "check the user and the password (PGPASSWORD or PGPASSFILE) for this target",
                ) from None
            if attempt < retries:
                time.sleep(backoff * 2**attempt)
    raise DatabaseUnreachable(
        f"cannot connect to {label} ({redact(dsn)}) after {retries + 1} attempt{'s' if retries else ''}: {redact(str(last).strip())}",
        "check that the server is up and reachable, and the user/password (PGPASSWORD or PGPASSFILE) are right",
    )


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
