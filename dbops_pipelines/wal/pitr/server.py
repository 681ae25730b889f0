"""The recovered server: its settings on top of production's, its private socket and rules, and
watching it until recovery reaches the target."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg

from dbops_pipelines.wal.pitr.target import PitrFailed, RecoveryTarget

def _conf_value(value: str) -> str:
    # postgresql.conf strings: quotes doubled, and backslashes, which its parser reads as escapes.
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _literal_percent(text: str) -> str:
    return text.replace("%", "%%")      # restore_command substitutes %f, %p, %r: any other % must be doubled


def recovery_settings(cluster: str, config_path: Path, port: int, target: RecoveryTarget,
                      socket_dir: Path | None = None) -> dict[str, str]:
    """What the copy runs with, on top of the production configuration it was restored with.
    The backup key is not among them: it reaches restore_command through the server's
    environment, never a file."""
    # cli_wal rather than the whole `dbops`: it starts several times faster, once per WAL file.
    # --strict: any failure but "not in the archive" exits above 125, which makes PostgreSQL stop
    # recovery instead of taking it for the end of the archive (and opening early, silently).
    fetch = (f"DBOPS_CONFIG={_literal_percent(shlex.quote(str(config_path)))} "
             f"{_literal_percent(shlex.quote(sys.executable))} -m dbops_pipelines.cli_wal "
             f"wal-fetch %f %p --strict --cluster {_literal_percent(shlex.quote(cluster))}")
    local = {"unix_socket_directories": str(socket_dir), "hba_file": str(socket_dir / "pg_hba.conf")} if socket_dir else \
        {"unix_socket_directories": ""}
    return {"port": str(port), "listen_addresses": "127.0.0.1", **local,
            "archive_mode": "off", "primary_conninfo": "", "primary_slot_name": "", "hot_standby": "on",
            # Production's commands and connections must not run from the copy.
            "archive_cleanup_command": "", "recovery_end_command": "", "max_logical_replication_workers": "0",
            "synchronous_standby_names": "", "external_pid_file": "", "log_directory": "log", "huge_pages": "off",
            "restore_command": fetch, **target.settings()}


def write_recovery(data_dir: Path, settings: dict[str, str]) -> None:
    # postgresql.auto.conf is read last: these win over anything production set, ALTER SYSTEM included.
    lines = ["", "# dbops pitr: recovery of this copy (docs/pitr.md)"]
    lines += [f"{k} = {_conf_value(v)}" for k, v in settings.items()]
    with open(data_dir / "postgresql.auto.conf", "a") as fh:
        fh.write("\n".join(lines) + "\n")
    (data_dir / "recovery.signal").touch()
    # A base backup taken on a standby carries standby.signal: with it the copy would stay a
    # standby for ever instead of recovering to the target.
    (data_dir / "standby.signal").unlink(missing_ok=True)
    if os.geteuid() == 0:          # the files belong to the server's user, like the rest of the directory
        owner = data_dir.stat()
        for name in ("postgresql.auto.conf", "recovery.signal"):
            os.chown(data_dir / name, owner.st_uid, owner.st_gid)


def as_owner(data_dir: Path, cmd: list[str]) -> list[str]:
    """As root, run the server as the user who owns the data directory (restore gives it to postgres)."""
    if os.geteuid() != 0:
        return cmd
    import pwd
    return ["runuser", "-u", pwd.getpwuid(data_dir.stat().st_uid).pw_name, "--", *cmd]


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def socket_dir_for(into: Path) -> Path:
    """Where the copy in ``into`` keeps its socket: beside the data directory, or, when that path
    is too long for a socket (about 100 characters at most), a short one in /tmp named after it."""
    beside = into.parent / f".{into.name}.socket"
    if len(str(beside)) < 80:
        return beside
    return Path("/tmp") / f"dbops-pitr-{hashlib.sha256(str(into).encode()).hexdigest()[:12]}"


def private_socket(into: Path) -> Path:
    """A private (0700) directory for the copy's Unix socket and its pg_hba.conf: `local` trust
    first (only the server's OS user and root can reach the socket), then production's own
    rules for 127.0.0.1, so dbops can watch the copy whatever production's password rules are.
    ``into`` is new or empty, so a directory left by an earlier attempt at it is stale."""
    socket_dir = socket_dir_for(into)
    shutil.rmtree(socket_dir, ignore_errors=True)
    socket_dir.mkdir(mode=0o700)
    rules = "# dbops pitr: the copy's own rules (docs/pitr.md)\nlocal all all trust\n"
    production = into / "pg_hba.conf"
    if production.exists():
        rules += production.read_text(errors="replace")
    (socket_dir / "pg_hba.conf").write_text(rules)
    if os.geteuid() == 0:
        st = into.stat()
        for path in (socket_dir, socket_dir / "pg_hba.conf"):
            os.chown(path, st.st_uid, st.st_gid)
    return socket_dir


def superuser_guess(into: Path) -> list[str]:
    """Roles to try: the OS user that owns the data directory (initdb's default), then postgres."""
    import pwd
    try:
        owner = pwd.getpwuid(into.stat().st_uid).pw_name
    except KeyError:
        return ["postgres"]
    return list(dict.fromkeys([owner, "postgres"]))


def wait_for_target(port: int, target: RecoveryTarget, log_file: Path, server_alive: Callable[[], bool],
                     timeout: float, log: Callable[[str], None], socket_dir: Path | None = None,
                     users: list[str] | None = None) -> tuple[str, str | None, str | None, int | None]:
    """Poll the copy until recovery reached the target: promoted (out of recovery) or paused."""
    host = str(socket_dir) if socket_dir else "127.0.0.1"
    users = users or ["postgres"]
    attempt = 0
    deadline, last_note = time.monotonic() + timeout, 0.0
    while time.monotonic() < deadline:
        if not server_alive():
            raise PitrFailed(f"the recovered server stopped before reaching {target.describe()}. Its log:\n"
                             f"{log_tail(log_file)}",
                             "if it says the recovery target was not reached, the archive does not hold it: choose an "
                             "earlier target; the data directory is left for inspection")
        dsn = f"host={host} port={port} dbname=postgres user={users[attempt % len(users)]} connect_timeout=5"
        attempt += 1
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                pause_state = ("pg_get_wal_replay_pause_state()" if conn.info.server_version >= 140000 else
                               "CASE WHEN pg_is_wal_replay_paused() THEN 'paused' ELSE 'not paused' END")    # 13
                in_recovery, paused, lsn, at, tli = conn.execute(
                    f"SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN {pause_state} END, "
                    "coalesce(pg_last_wal_replay_lsn(), pg_current_wal_lsn())::text, pg_last_xact_replay_timestamp(), "
                    "(SELECT timeline_id FROM pg_control_checkpoint())").fetchone()
                if not in_recovery:
                    return "promoted", lsn, at.isoformat() if at else None, tli
                if paused == "paused" and target.action == "pause":
                    return "paused", lsn, at.isoformat() if at else None, tli
                if time.monotonic() - last_note > 10:
                    last_note = time.monotonic()
                    log(f"recovering: replayed up to {lsn}" + (f" ({at.isoformat(timespec='seconds')})" if at else ""))
        except psycopg.OperationalError:
            pass                  # not accepting connections yet (before consistency)
        time.sleep(0.5)
    raise PitrFailed(f"recovery did not reach {target.describe()} within {timeout:.0f} s", "look at the server's log: "
                     f"{log_file}; the server is left running for inspection")
