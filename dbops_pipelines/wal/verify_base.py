"""Verification of a base backup, and the PITR drill (docs/pitr.md#verifying-base-backups).

``verify_base_backup(ctx, target)`` proves that the newest valid base backup of the target's
cluster (or the one named) comes back as a working cluster:

1. restore: the stored object authenticated record by record, decompressed and extracted into
   a private scratch directory (restore_base_backup); a damaged object is an ``integrity`` finding;
2. pg_verifybackup on the files: every file against the server's backup_manifest, and the WAL
   the backup carries (``-X fetch``) parsed;
3. recovery to the backup's consistent point only: a server on the copy with
   ``recovery_target = 'immediate'`` replays the WAL in its pg_wal from the checkpoint in
   backup_label to the backup's end (stop LSN) and opens. restore_command is ``false``: this
   check needs nothing but the base backup itself (the archive is checked by `dbops wal verify`
   and by the drill below). The copy has no TCP listener: only a Unix socket in the scratch
   directory (mode 0700) with its own pg_hba ("local all all trust"), archive_mode off, fsync off
   (it is thrown away), no timeouts from production's configuration;
4. ``pg_amcheck --all --heapallindexed --install-missing`` on the copy: every table's pages and
   every B-tree index checked, and every heap tuple found in its indexes (amcheck is installed
   into the copy, never into production);
5. exact row counts of every table of every database of the copy, recorded. Comparing them
   with the live database "at the backup's end LSN" is not possible on a database that kept
   writing: there is no way to read the live database as of a past LSN. The report says so
   rather than compare numbers that would differ for no fault of the backup;
6. with ``drill=True``, the PITR drill: two marker rows written into ``<audit schema>.pitr_drill``
   of the target's database by its write role (targets.<t>.roles.cleanup; no such role: the
   drill is skipped and the report says why), a moment between them taken from the server's
   clock, the WAL switched and archived, then `dbops pitr` itself (pitr()) recovers a second
   copy to that moment: the first marker must be there, the second and anything later not.
   The markers are written before step 3 so the server archives them while the copy is checked.

The scratch directory (``$TMPDIR/dbops-verify-base-*``) is removed whatever happens, every
server on it stopped first. Never raises for a bad backup: every problem with the backup
becomes a finding in a saved, failed report (base_report.py). Raises VerificationNotRun (or
another DbopsError) when the verification could not be carried out (no key, no base backup,
no PostgreSQL binaries): an operator's problem is never recorded as evidence against a backup.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from dbops_pipelines.backup.snapshot import count_rows, user_tables
from dbops_pipelines.config import config_path as default_config_path
from dbops_pipelines.context import FleetContext
from dbops_pipelines.errors import (ConfigError, DbopsError, EncryptionKeyError, IntegrityError, RestoreFailed, StorageError,
                                    VerificationNotRun)
from dbops_pipelines.pgtools import PgProcess, find_binary
from dbops_pipelines.redact import redact
from dbops_pipelines.verification.report import Finding
from dbops_pipelines.wal.base_report import BaseVerificationReport, save_base_report
from dbops_pipelines.wal.basebackup import (BaseBackupEntry, list_base_backups, parse_base_backup_id, restore_base_backup,
                                            verify_base_backup_files)
from dbops_pipelines.wal.basebackup.manifest import cluster_safe
from dbops_pipelines.wal.basebackup.restore import PG_OS_USER
from dbops_pipelines.wal.naming import SEGMENT
from dbops_pipelines.wal.pitr.server import socket_dir_for
from dbops_pipelines.wal.pitr import RecoveryTarget, as_owner as _as_owner, log_tail as _log_tail, write_recovery as _write_recovery, pitr

SUPERUSER = "postgres"          # the role the copies are read as (as `dbops pitr` does)
DRILL_TABLE = "pitr_drill"
DRILL_KEEP_DAYS = 30            # marker rows of older drills are deleted by the next drill
MARKER_GAP_SECONDS = 1.0        # between the target moment and the second marker (clock margins)
SOCKET_PATH_MAX = 100           # sun_path is 108 bytes, with ".s.PGSQL.<port>" after the directory


# --- small helpers ---------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _make_scratch(workdir: Path | None) -> Path:
    """A private directory the server's OS user owns (it holds data directories and a socket)."""
    scratch = Path(tempfile.mkdtemp(prefix="dbops-verify-base-", dir=str(workdir) if workdir else None))
    try:
        if len(str(scratch)) + len("/.s.PGSQL.65535") > SOCKET_PATH_MAX:
            raise VerificationNotRun(f"the scratch directory {scratch} is too long a path for a Unix socket",
                                     "set TMPDIR to a shorter directory (e.g. /tmp); nothing was restored")
        if os.geteuid() == 0:
            try:
                pg = pwd.getpwnam(PG_OS_USER)
            except KeyError:
                raise VerificationNotRun(f"running as root, but there is no {PG_OS_USER!r} OS user to run the copy",
                                         "install the PostgreSQL server package, or run as the server's OS user") from None
            os.chown(scratch, pg.pw_uid, pg.pw_gid)
        return scratch
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def _give_to_owner(path: Path, owner_of: Path) -> None:
    if os.geteuid() == 0:
        st = owner_of.stat()
        os.chown(path, st.st_uid, st.st_gid)


def _stop_server(pg_ctl: Path, data_dir: Path) -> None:
    """Immediate shutdown of a throwaway copy (nothing of it is kept), waiting until it is gone."""
    if not (data_dir / "postmaster.pid").exists():
        return
    subprocess.run(_as_owner(data_dir, [str(pg_ctl), "stop", "-D", str(data_dir), "-m", "immediate", "-w", "-t", "60"]),
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _server_running(pg_ctl: Path, data_dir: Path) -> bool:
    return subprocess.run(_as_owner(data_dir, [str(pg_ctl), "status", "-D", str(data_dir)]), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode == 0


# --- choosing the base backup ----------------------------------------------------------------

def pick_base_backup(ctx: FleetContext, cluster: str, backup_id: str | None) -> BaseBackupEntry:
    """The named base backup, or the newest one whose manifest authenticates. Damaged ones (data
    object missing or of the wrong size) are picked too: their damage is what verification
    reports. One still being written, or whose manifest does not authenticate, cannot be."""
    try:
        entries = list_base_backups(ctx, cluster)
    except EncryptionKeyError as exc:
        raise VerificationNotRun(f"verification of the base backups of {cluster} not run: {exc.message}", exc.hint) from None
    if backup_id:
        parsed = parse_base_backup_id(backup_id)
        if parsed is None or parsed[0] != cluster_safe(cluster):
            raise StorageError(f"{backup_id!r} is not a base backup id of cluster {cluster}",
                               f"run `dbops basebackup list --cluster {cluster}` to see its base backups")
        found = [e for e in entries if e.backup_id == backup_id]
        if not found:
            raise StorageError(f"base backup {backup_id} not found", "run `dbops basebackup list` to see the base backups")
        entry = found[0]
        if entry.manifest is None:
            if isinstance(entry.error, EncryptionKeyError):
                raise VerificationNotRun(f"verification of {backup_id} not run: {entry.error.message}", entry.error.hint)
            if entry.error is not None:
                raise entry.error
            raise StorageError(f"base backup {backup_id} is {entry.state} (no manifest)",
                               "it cannot be verified; pick a valid one from `dbops basebackup list`")
        return entry
    usable = [e for e in entries if e.manifest is not None]          # newest first
    if not usable:
        key_error = next((e.error for e in entries if isinstance(e.error, EncryptionKeyError)), None)
        if key_error:
            raise VerificationNotRun(f"verification of the base backups of {cluster} not run: {key_error.message}", key_error.hint)
        raise StorageError(f"cluster {cluster} has no base backup to verify", "take one: `dbops basebackup take TARGET`")
    return usable[0]


# --- the PITR drill: markers in the live database --------------------------------------------

@dataclass
class DrillMarkers:
    drill_id: str
    schema: str
    database: str
    first_at: datetime            # when marker 1 was written (server clock)
    target_time: datetime         # after marker 1's commit, before marker 2's
    second_at: datetime
    segment: str                  # the WAL segment holding marker 2's commit: archived before recovering
    switched: bool                # pg_switch_wal() was allowed; else archive_timeout must close the segment
    dsn: str


def _drill_schema(ctx: FleetContext, target: str) -> str:
    gdpr = ctx.config.target(target).gdpr
    return gdpr.audit_schema if gdpr is not None else "dbops_audit"


def write_drill_markers(ctx: FleetContext, target: str, log: Callable[[str], None]) -> DrillMarkers:
    """Marker 1, the target moment, marker 2, then a WAL switch. ConfigError when the drill
    cannot run for a reason of configuration or privileges (the message says what to grant)."""
    dsn = ctx.config.dsn_for(target, "cleanup")         # ConfigError: no write role configured
    schema = _drill_schema(ctx, target)
    table = sql.Identifier(schema, DRILL_TABLE)
    drill_id = _now().strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(3)
    role = database = None
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            role, database = conn.execute("SELECT current_user, current_database()").fetchone()
            if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                raise ConfigError("the target's server is a standby: the drill's marker rows cannot be written there",
                                  "point the target's dsn at the primary to run the drill")
            with conn.transaction():
                if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is None:
                    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
                # Existence first: CREATE TABLE IF NOT EXISTS needs CREATE on the schema even when it exists.
                if conn.execute("SELECT to_regclass(%s)", (table.as_string(conn),)).fetchone()[0] is None:
                    conn.execute(sql.SQL("CREATE TABLE {} (drill_id text NOT NULL, marker int NOT NULL, "
                                         "written_at timestamptz NOT NULL DEFAULT clock_timestamp(), "
                                         "PRIMARY KEY (drill_id, marker))").format(table))
                conn.execute(sql.SQL("DELETE FROM {} WHERE written_at < now() - make_interval(days => %s)").format(table),
                             (DRILL_KEEP_DAYS,))
            insert = sql.SQL("INSERT INTO {} (drill_id, marker) VALUES (%s, %s) RETURNING written_at").format(table)
            first_at = conn.execute(insert, (drill_id, 1)).fetchone()[0]       # committed (autocommit)
            target_time = conn.execute("SELECT clock_timestamp()").fetchone()[0]
            time.sleep(MARKER_GAP_SECONDS)
            second_at = conn.execute(insert, (drill_id, 2)).fetchone()[0]
            segment = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
            try:
                conn.execute("SELECT pg_switch_wal()")
                switched = True
            except psycopg.errors.InsufficientPrivilege:
                switched = False
                log(f"PITR drill: role {role} may not run pg_switch_wal(); waiting for archive_timeout to close {segment}")
    except psycopg.errors.InsufficientPrivilege:
        s, r = sql.Identifier(schema).as_string(None), sql.Identifier(role).as_string(None) if role else "<role>"
        raise ConfigError(f"role {role!r} may not create or write {schema}.{DRILL_TABLE} in database {database!r}",
                          f"as the database owner: CREATE SCHEMA IF NOT EXISTS {s} AUTHORIZATION {r} (the drill then "
                          f"creates its table); or, if {schema}.{DRILL_TABLE} exists, GRANT USAGE ON SCHEMA {s} TO {r}; "
                          f"GRANT SELECT, INSERT, DELETE ON {s}.{DRILL_TABLE} TO {r}") from None
    except psycopg.Error as exc:
        raise ConfigError(f"the drill's marker rows could not be written: {redact(str(exc)).strip()}",
                          "check the write role's access to the target (targets.<t>.roles.cleanup)") from None
    log(f"PITR drill {drill_id}: marker 1 at {first_at.isoformat()}, target {target_time.isoformat()}, "
        f"marker 2 at {second_at.isoformat()} (WAL {segment})")
    return DrillMarkers(drill_id, schema, database, first_at, target_time, second_at, segment, switched, dsn)


def wait_archived(markers: DrillMarkers, timeout: float) -> tuple[bool, str | None]:
    """Until the segment holding marker 2 is archived (pg_stat_archiver). (archived, last failure)."""
    deadline = time.monotonic() + timeout
    failed = None
    with psycopg.connect(markers.dsn, autocommit=True, connect_timeout=10) as conn:
        while True:
            archived, failed = conn.execute("SELECT last_archived_wal, last_failed_wal FROM pg_stat_archiver").fetchone()
            if archived and SEGMENT.fullmatch(archived) and archived >= markers.segment:
                return True, None
            if time.monotonic() > deadline:
                return False, failed
            time.sleep(0.3)


def _archive_wait_seconds(markers: DrillMarkers) -> float:
    if markers.switched:
        return 120.0
    try:
        with psycopg.connect(markers.dsn, autocommit=True, connect_timeout=10) as conn:
            timeout = conn.execute("SELECT setting::int FROM pg_settings WHERE name = 'archive_timeout'").fetchone()[0]
    except psycopg.Error:
        timeout = 0
    return float(min(max(120, 2 * timeout + 30), 1800))


# --- the consistent copy -----------------------------------------------------------------------

def _copy_settings(port: int, scratch: Path, hba: Path) -> dict[str, str]:
    return {"port": str(port), "listen_addresses": "", "unix_socket_directories": str(scratch), "hba_file": str(hba),
            "ssl": "off", "archive_mode": "off", "primary_conninfo": "", "primary_slot_name": "", "hot_standby": "on",
            "restore_command": "false", "recovery_target": "immediate", "recovery_target_action": "promote",
            "fsync": "off", "logging_collector": "off", "log_destination": "stderr", "statement_timeout": "0",
            "idle_in_transaction_session_timeout": "0", "default_transaction_read_only": "off"}


def _copy_dsn(scratch: Path, port: int, dbname: str) -> str:
    return make_conninfo(host=str(scratch), port=str(port), dbname=dbname, user=SUPERUSER,
                                          connect_timeout="5")


def _open_copy(pg_ctl: Path, data_dir: Path, scratch: Path, port: int, timeout: float,
               log: Callable[[str], None]) -> tuple[dict | None, str | None]:
    """Start the copy and wait until it reached consistency and opened. ({lsn, ...}, None) or
    (None, why not)."""
    hba = scratch / "pg_hba.conf"
    hba.write_text("# dbops verify-restore: the copy answers on its private Unix socket only\nlocal all all trust\n")
    log_file = scratch / "base.log"
    log_file.touch()
    for path in (hba, log_file):
        os.chmod(path, 0o600)
        _give_to_owner(path, data_dir)
    _write_recovery(data_dir, _copy_settings(port, scratch, hba))
    started = subprocess.run(_as_owner(data_dir, [str(pg_ctl), "start", "-D", str(data_dir), "-l", str(log_file), "-W"]),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             cwd=str(scratch))
    if started.returncode != 0:
        return None, f"the restored copy did not start: {started.stdout.strip()}\n{_log_tail(log_file)}"
    dsn = _copy_dsn(scratch, port, "template1")
    t0 = time.monotonic()
    seen = False
    while time.monotonic() - t0 < timeout:
        running = _server_running(pg_ctl, data_dir)
        seen = seen or running
        if not running and (seen or time.monotonic() - t0 > 30):
            return None, f"the restored copy stopped before reaching consistency. Its log:\n{_log_tail(log_file)}"
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                in_recovery, lsn, at, tli = conn.execute(
                    "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp(), "
                    "(SELECT timeline_id FROM pg_control_checkpoint())").fetchone()
                if not in_recovery:
                    return {"lsn": lsn, "timeline_after_promotion": tli,
                            "last_transaction_at": at.isoformat() if at else None}, None
        except psycopg.OperationalError:
            pass                  # not accepting connections before consistency
        time.sleep(0.3)
    return None, f"the restored copy did not reach consistency within {timeout:.0f} s. Its log:\n{_log_tail(log_file)}"


def run_amcheck(pg_amcheck: Path, scratch: Path, port: int) -> dict:
    """pg_amcheck on every database of the copy. ok: exit 0; corruption: exit 2 with the
    relations on stdout; missing: amcheck is not installed on this machine (not checked)."""
    cmd = [str(pg_amcheck), "--all", "--heapallindexed", "--install-missing", "--no-password",
           "-h", str(scratch), "-p", str(port), "-U", SUPERUSER]
    t0 = time.monotonic()
    with PgProcess(cmd, stdout=True, error=VerificationNotRun) as proc:
        out = proc.stdout.read().decode("utf-8", "replace")
        rc = proc.wait()
    lines = [redact(line) for line in out.splitlines() + proc.messages.text().splitlines() if line.strip()]
    missing = rc != 0 and any("amcheck" in line and ("control file" in line or "not available" in line) for line in lines)
    return {"ok": rc == 0, "exit_code": rc, "missing": missing, "messages": lines[:200],
            "seconds": round(time.monotonic() - t0, 3)}


def count_copy_rows(scratch: Path, port: int) -> tuple[dict[str, dict[str, int]], list[str]]:
    """Exact rows of every table of every database of the copy, and the tables that could not be
    read (a damaged page fails the count: each table is counted on its own)."""
    counts: dict[str, dict[str, int]] = {}
    unreadable: list[str] = []
    with psycopg.connect(_copy_dsn(scratch, port, "template1"), autocommit=True) as conn:
        databases = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate "
                                                "ORDER BY datname").fetchall()]
    for db in databases:
        counts[db] = {}
        with psycopg.connect(_copy_dsn(scratch, port, db), autocommit=True) as conn:
            for table in user_tables(conn):
                try:
                    counts[db].update(count_rows(conn, [table]))
                except psycopg.Error as exc:
                    unreadable.append(f"{db}: {table}: {redact(str(exc)).strip().splitlines()[0]}")
    return counts, unreadable


def _live_note(ctx: FleetContext, target: str, stop_lsn: str) -> str:
    try:
        with psycopg.connect(ctx.config.dsn_for(target, "monitor"), autocommit=True, connect_timeout=10) as conn:
            now_lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
        where = f" (the live server is at LSN {now_lsn} now)"
    except (psycopg.Error, DbopsError):
        where = ""
    return (f"not compared with the live database: it has moved on since the backup's end LSN {stop_lsn}{where}, and "
            "a live database cannot be read as of a past LSN; the counts above are those of the backup at that LSN")


# --- the verification ---------------------------------------------------------------------------

def verify_base_backup(ctx: FleetContext, target: str, backup_id: str | None = None, drill: bool = True,
                       log: Callable[[str], None] = lambda _msg: None, run_id: str | None = None,
                       config_path: Path | None = None, timeout: float = 3600.0,
                       workdir: Path | None = None) -> BaseVerificationReport:
    """Verify a base backup of ``target``'s cluster (module docstring); the sealed report is
    saved under _verifications/<cluster>/base/<id>/ and returned."""
    cfg = ctx.config
    cluster = cfg.server_of(target)
    entry = pick_base_backup(ctx, cluster, backup_id)
    m = entry.manifest
    try:
        seal_key = ctx.write_key          # reports are sealed with it: check before any work
        if m.key_id not in {k.key_id for k in ctx.read_keys}:
            raise EncryptionKeyError(f"base backup {m.backup_id} was encrypted with key id {m.key_id}, which no configured "
                                     "key matches", "set the key it was written with (encryption.previous_key_envs after a rotation)")
    except EncryptionKeyError as exc:
        raise VerificationNotRun(f"verification of {m.backup_id} not run: {exc.message}", exc.hint) from None
    major = int(m.server_version.split(".")[0])
    pg_ctl = find_binary("pg_ctl", major, cfg.defaults.pg_bin_dir, error=VerificationNotRun)
    config_path = Path(config_path or default_config_path()).resolve()
    report = BaseVerificationReport(backup_id=m.backup_id, cluster=cluster, target=target, verified_at=_now().isoformat(),
                                    run_id=run_id, server_version=m.server_version, start_lsn=m.start_lsn,
                                    stop_lsn=m.stop_lsn, stop_time=m.stop_time)
    log(f"verifying base backup {m.backup_id} of {cluster} (LSN {m.start_lsn} to {m.stop_lsn})")
    scratch = _make_scratch(workdir)
    try:
        _check_base(ctx, entry, report, scratch, pg_ctl, major, target, drill, config_path, timeout, log)
    finally:
        for name in ("drill", "base"):
            _stop_server(pg_ctl, scratch / name)
        shutil.rmtree(socket_dir_for(scratch / "drill"), ignore_errors=True)   # the drill copy's socket (pitr)
        shutil.rmtree(scratch, ignore_errors=True)
    # Evidence for every conclusion, pass or fail; an interrupted run raises past this and records nothing.
    save_base_report(ctx.store, report, seal_key)
    return report


def _error(report: BaseVerificationReport, kind: str, message: str, severity: str = "error") -> None:
    report.findings.append(Finding(kind, severity, report.backup_id, message))


def _check_base(ctx: FleetContext, entry: BaseBackupEntry, report: BaseVerificationReport, scratch: Path, pg_ctl: Path,
                major: int, target: str, drill: bool, config_path: Path, timeout: float, log: Callable[[str], None]) -> None:
    m = entry.manifest
    cfg = ctx.config
    if not entry.valid:
        _error(report, "integrity", entry.problem or f"base backup {m.backup_id} is {entry.state}")
        report.drill = {"status": "skipped", "reason": "the base backup failed verification"}
        return
    data_dir = scratch / "base"
    try:
        restored = restore_base_backup(ctx, m, data_dir)
    except IntegrityError as exc:
        _error(report, "integrity", exc.message)
    except RestoreFailed as exc:
        _error(report, "restore", exc.message)
    except DbopsError as exc:     # the store unreachable...: nothing learnt about the backup
        raise VerificationNotRun(f"verification of {m.backup_id} not run: {exc.message}", exc.hint) from None
    else:
        report.restore_seconds = round(restored.seconds, 3)
        log(f"restored {restored.files} files ({restored.raw_bytes} bytes) in {restored.seconds:.1f} s; running pg_verifybackup")
        files = verify_base_backup_files(data_dir, cfg.defaults.pg_bin_dir)
        report.verifybackup = files.to_dict()
        if not files.ok:
            _error(report, "integrity", files.summary)
    if report.findings:
        report.drill = {"status": "skipped", "reason": "the base backup failed verification"}
        return

    markers = None
    if not drill:
        report.drill = {"status": "skipped", "reason": "not asked for (--no-drill)"}
    else:
        try:
            cfg.dsn_for(target, "cleanup")
        except ConfigError as exc:       # no write role: a choice of configuration, said in the report
            reason = f"{exc.message} ({exc.hint})"
            report.drill = {"status": "skipped", "reason": reason}
            report.notes.append(f"PITR drill skipped: {reason}. The drill writes two marker rows with that role; the "
                                "backup role stays read-only")
            log(f"PITR drill skipped: {exc.message}")
        else:
            try:
                markers = write_drill_markers(ctx, target, log)
            except ConfigError as exc:   # a role without the privileges, a standby...: worth a look
                report.drill = {"status": "skipped", "reason": exc.message + (f" ({exc.hint})" if exc.hint else "")}
                _error(report, "drill", f"the PITR drill could not run: {exc.message}"
                       + (f"; what to do: {exc.hint}" if exc.hint else ""), "warning")

    # The copy at the backup's consistent point: pg_amcheck, row counts.
    port = _free_port()
    log(f"recovering the copy to the backup's consistent point (LSN {m.stop_lsn})")
    t0 = time.monotonic()
    opened, why = _open_copy(pg_ctl, data_dir, scratch, port, timeout, log)
    if opened is None:
        _error(report, "recovery", why)
    else:
        report.recovery_seconds = round(time.monotonic() - t0, 3)
        report.rto_seconds = round(report.restore_seconds + report.recovery_seconds, 3)
        report.consistent_at = opened
        log(f"consistent and open at LSN {opened['lsn']} after {report.recovery_seconds:.1f} s; running pg_amcheck")
        try:
            amcheck = run_amcheck(find_binary("pg_amcheck", major, cfg.defaults.pg_bin_dir, error=VerificationNotRun), scratch, port)
        except VerificationNotRun as exc:
            amcheck = {"ok": False, "exit_code": None, "missing": True, "messages": [exc.message], "seconds": 0.0}
        report.amcheck = amcheck
        if amcheck["missing"]:
            _error(report, "not_checked", "pg_amcheck could not run (amcheck is not installed here): "
                   + "; ".join(amcheck["messages"][-3:]), "warning")
        elif not amcheck["ok"]:
            shown = "; ".join(amcheck["messages"][:5]) or f"exit {amcheck['exit_code']}"
            _error(report, "amcheck", f"pg_amcheck found problems in the restored copy (exit {amcheck['exit_code']}): {shown}")
        try:
            report.row_counts, unreadable = count_copy_rows(scratch, port)
            for problem in unreadable:
                _error(report, "row_count", f"a table of the restored copy cannot be read: {problem}")
        except psycopg.Error as exc:
            _error(report, "recovery", f"the restored copy could not be read: {redact(str(exc)).strip()}")
        report.live_comparison = _live_note(ctx, target, m.stop_lsn)
    _stop_server(pg_ctl, data_dir)
    shutil.rmtree(data_dir, ignore_errors=True)       # before the drill restores a second copy

    if markers is not None:
        if any(f.severity == "error" for f in report.findings):
            report.drill = {"status": "skipped", "reason": "the base backup failed verification", "drill_id": markers.drill_id}
        else:
            _run_drill(ctx, target, markers, report, scratch, config_path, timeout, log)


def _run_drill(ctx: FleetContext, target: str, markers: DrillMarkers, report: BaseVerificationReport, scratch: Path,
               config_path: Path, timeout: float, log: Callable[[str], None]) -> None:
    evidence = {"drill_id": markers.drill_id, "table": f"{markers.schema}.{DRILL_TABLE}", "database": markers.database,
                "marker_1_at": markers.first_at.isoformat(), "target_time": markers.target_time.isoformat(),
                "marker_2_at": markers.second_at.isoformat(), "segment": markers.segment}
    report.drill = {"status": "failed", **evidence}
    wait = _archive_wait_seconds(markers)
    try:
        archived, failed = wait_archived(markers, wait)
    except psycopg.Error as exc:
        report.drill.update(status="skipped", reason=f"pg_stat_archiver could not be read: {redact(str(exc)).strip()}")
        _error(report, "drill", f"the PITR drill could not run: {report.drill['reason']}", "warning")
        return
    if not archived:
        report.drill.update(status="skipped", reason=f"WAL segment {markers.segment} was not archived within {wait:.0f} s")
        _error(report, "drill", f"the PITR drill could not run: WAL segment {markers.segment} (holding its second marker) "
               f"was not archived within {wait:.0f} s" + (f"; pg_stat_archiver's last failure: {failed}" if failed else "")
               + ("" if markers.switched else "; the write role may not run pg_switch_wal(), and archive_timeout did not "
                  "close the segment in time"), "warning")
        return
    into, port = scratch / "drill", _free_port()
    goal = RecoveryTarget("time", markers.target_time.isoformat(), "promote")
    log(f"PITR drill: recovering a second copy to {goal.value}")
    t0 = time.monotonic()
    try:
        result = pitr(ctx, target, into, port, goal, config_path, log=log, timeout=timeout)
    except DbopsError as exc:
        _error(report, "drill", f"the PITR drill's recovery to {goal.value} failed: {exc.message}")
        return
    report.drill.update(base_backup=result.base_backup, reached_lsn=result.reached_lsn,
                        last_transaction_at=result.last_transaction_at, rto_seconds=round(time.monotonic() - t0, 3))
    dsn = make_conninfo(host="127.0.0.1", port=str(port), dbname=markers.database, user=SUPERUSER,
                                         connect_timeout="10")
    table = sql.Identifier(markers.schema, DRILL_TABLE)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            present = [r[0] for r in conn.execute(sql.SQL("SELECT marker FROM {} WHERE drill_id = %s ORDER BY marker")
                                                  .format(table), (markers.drill_id,)).fetchall()]
            later = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE written_at > %s").format(table),
                                 (markers.target_time,)).fetchone()[0]
    except psycopg.Error as exc:
        _error(report, "drill", f"the PITR drill's copy could not be read: {redact(str(exc)).strip()}")
        return
    report.drill.update(markers_present=present, rows_after_target=later)
    problems = []
    if 1 not in present:
        problems.append(f"marker 1 (written {markers.first_at.isoformat()}) is missing from the copy recovered to "
                        f"{goal.value}: recovery stopped too early")
    if 2 in present or later:
        problems.append(f"the copy recovered to {goal.value} holds {later} row(s) written after it"
                        + (", marker 2 among them" if 2 in present else "") + ": recovery went past its target")
    if result.last_transaction_at and datetime.fromisoformat(result.last_transaction_at) > markers.target_time:
        problems.append(f"the copy's last replayed transaction ({result.last_transaction_at}) is after the target {goal.value}")
    for p in problems:
        _error(report, "drill", f"PITR drill: {p}")
    if not problems:
        report.drill["status"] = "passed"
        log(f"PITR drill passed: marker 1 present, nothing after {goal.value} (recovered in {report.drill['rto_seconds']:.1f} s)")
