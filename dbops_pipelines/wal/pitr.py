"""Point-in-time recovery into a new data directory: pick the newest base backup before the target,
restore it, configure recovery (restore_command = dbops wal-fetch, the recovery target), start a
server on a port of its own, wait until recovery reaches the target, and report the exact point
reached (LSN, last transaction time, timeline) and the RTO.

It never touches the running cluster: the directory must be new or empty, the port free, the
copy listens on 127.0.0.1 and a private socket only, never connects to a primary, and has
archive_mode off (a promoted copy must never push WAL into the production archive). Everything
that can be checked before restoring is: a target before the oldest base backup, after the end
of the archive, or with a gap in the WAL between the base backup and the archive's end, is an
error before any byte is written.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import psycopg

from dbops_pipelines.context import FleetContext
from dbops_pipelines.errors import ConfigError, DbopsError
from dbops_pipelines.pgtools import find_binary
from dbops_pipelines.wal.archive.identity import read_archive_info
from dbops_pipelines.wal.basebackup import BaseBackupManifest, list_base_backups, restore_base_backup
from dbops_pipelines.wal.naming import (DEFAULT_SEGMENT_SIZE, SEGMENT, Segment, cluster_prefix, format_lsn, parse_lsn,
                                        parse_segment)

ACTIONS = ("promote", "pause")
CONF_FILE = "dbops_pitr.conf"


class PitrFailed(DbopsError):
    """The point-in-time restore did not reach its target."""


@dataclass(frozen=True)
class RecoveryTarget:
    kind: str                 # time | xid | lsn | name | latest
    value: str | None = None
    action: str = "promote"

    def describe(self) -> str:
        return "the end of the archive" if self.kind == "latest" else f"{self.kind} {self.value}"

    def settings(self) -> dict[str, str]:
        out = {"recovery_target_timeline": "latest"}
        if self.kind != "latest":
            out[f"recovery_target_{self.kind}"] = self.value or ""
            out["recovery_target_action"] = self.action
            out["recovery_target_inclusive"] = "on"
        return out


def parse_target(to: str | None = None, xid: str | None = None, lsn: str | None = None, name: str | None = None,
                 latest: bool = False, action: str = "promote") -> RecoveryTarget:
    given = [(k, v) for k, v in (("time", to), ("xid", xid), ("lsn", lsn), ("name", name)) if v is not None]
    if len(given) + bool(latest) != 1:
        raise ConfigError("name exactly one recovery target", "use one of --to TIMESTAMP, --to-xid, --to-lsn, --to-name, --latest")
    if action not in ACTIONS:
        raise ConfigError(f"unknown --action {action!r}", "use promote or pause")
    if latest:
        return RecoveryTarget("latest", None, "promote")
    kind, value = given[0]
    if kind == "time":
        try:
            when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"{value!r} is not an ISO 8601 time", "e.g. --to 2026-11-24T14:05:00Z") from None
        value = (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).isoformat()
    elif kind == "lsn":
        try:
            value = format_lsn(parse_lsn(value))
        except ValueError as exc:
            raise ConfigError(str(exc), "an LSN looks like 0/3000028 (pg_current_wal_lsn())") from None
    elif kind == "xid" and not value.isdigit():
        raise ConfigError(f"{value!r} is not a transaction id", "a number, e.g. --to-xid 7451")
    elif kind == "name" and (not value or len(value) > 63):
        raise ConfigError("a restore point name has 1 to 63 characters", "the name given to pg_create_restore_point()")
    return RecoveryTarget(kind, value, action)


@dataclass
class PitrResult:
    cluster: str
    target: str                       # the recovery target, described
    base_backup: str
    data_dir: str
    port: int
    reached_lsn: str | None
    last_transaction_at: str | None
    timeline: int | None
    state: str                        # promoted | paused
    rto_seconds: float
    restore_seconds: float
    stop_command: str

    def to_dict(self) -> dict:
        return asdict(self)


# --- before anything is restored -------------------------------------------------------------

@dataclass(frozen=True)
class ArchivedSegment:
    segment: Segment
    stored_at: datetime


def archive_info(ctx: FleetContext, cluster: str) -> dict:
    """The archive's archive.info (authenticated): the owning system identifier, the segment size."""
    info = read_archive_info(ctx.store, ctx.read_keys, cluster)
    if info is None:
        raise PitrFailed(f"the WAL archive of {cluster} is empty (no archive.info)",
                         "set archive_command to `dbops wal-push %p ...` (docs/pitr.md#wal-archiving) and check "
                         "pg_stat_archiver")
    return info


def archived_segments(ctx: FleetContext, cluster: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> list[ArchivedSegment]:
    root = cluster_prefix(cluster) + "archive/"
    out = []
    for info in ctx.store.list(root):
        name = info.key.rsplit("/", 1)[-1].removesuffix(".zst.aes")
        if SEGMENT.fullmatch(name):
            out.append(ArchivedSegment(parse_segment(name, segment_size), info.modified))
    return sorted(out, key=lambda a: a.segment)


def choose_base_backup(manifests: list[BaseBackupManifest], target: RecoveryTarget,
                       backup_id: str | None = None) -> BaseBackupManifest:
    """The newest valid base backup that ends (is consistent) before the target, or the one named
    (a restore point or a transaction id cannot be placed in time: name an older one if needed)."""
    if backup_id:
        named = [m for m in manifests if m.backup_id == backup_id]
        if not named:
            raise PitrFailed(f"base backup {backup_id} is not a valid base backup of this cluster's archive",
                             "see `dbops basebackup list TARGET`")
        manifests = named
    if not manifests:
        raise PitrFailed("there is no valid base backup to start from", "take one: `dbops basebackup take TARGET`")
    usable = sorted(manifests, key=lambda m: parse_lsn(m.stop_lsn), reverse=True)
    if target.kind == "time":
        when = datetime.fromisoformat(target.value)
        usable = [m for m in usable if datetime.fromisoformat(m.stop_time) < when]
    elif target.kind == "lsn":
        usable = [m for m in usable if parse_lsn(m.stop_lsn) <= parse_lsn(target.value)]
    if not usable:
        oldest = min(manifests, key=lambda m: parse_lsn(m.stop_lsn))
        raise PitrFailed(f"{target.describe()} is before the end of the oldest base backup ({oldest.backup_id}, "
                         f"consistent from {oldest.stop_time}, LSN {oldest.stop_lsn})",
                         "no point before that can be recovered: choose a later target")
    return usable[0]


def check_archive_reaches(base: BaseBackupManifest, segments: list[ArchivedSegment], target: RecoveryTarget,
                          size: int = DEFAULT_SEGMENT_SIZE) -> Segment:
    """The archive holds every segment from the base backup's start to its newest on that
    timeline, and (for time and LSN targets) reaches the target. Returns the newest segment."""
    first = Segment(base.timeline, parse_lsn(base.start_lsn) // size)
    mine = [a for a in segments if a.segment.timeline == base.timeline and a.segment.number >= first.number]
    have = {a.segment.number for a in mine}
    # -X fetch base backups carry their own WAL up to stop_lsn: the archive must go on from there.
    needed_from = parse_lsn(base.stop_lsn) // size
    if not mine or max(have) < needed_from:
        if target.kind != "latest" or not mine:
            raise PitrFailed(f"the WAL archive has no segment after base backup {base.backup_id} (timeline "
                             f"{base.timeline}, from {Segment(base.timeline, needed_from).name(size)})",
                             "check archiving: `dbops wal verify TARGET`, pg_stat_archiver on the server")
    newest = max(mine, key=lambda a: a.segment) if mine else None
    missing = [n for n in range(needed_from, max(have) + 1) if n not in have] if mine else []
    if missing:
        raise PitrFailed(f"the WAL archive has a gap after base backup {base.backup_id}: segment "
                         f"{Segment(base.timeline, missing[0]).name(size)} is missing"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                         "recovery cannot pass a gap: recover to a point before it, or take a new base backup after "
                         "it; `dbops wal verify TARGET` lists every gap")
    # The end of the archive counts later timelines too: recovery follows them (timeline 'latest').
    later = [a for a in segments if a.segment.timeline >= base.timeline] or mine
    end_lsn = max((a.segment.number + 1) * size for a in later)
    last = max(later, key=lambda a: a.stored_at)
    if target.kind == "lsn" and parse_lsn(target.value) >= end_lsn:
        raise PitrFailed(f"LSN {target.value} is after the end of the WAL archive ({format_lsn(end_lsn)})",
                         "choose an earlier target, or --latest for everything archived")
    if target.kind == "time" and datetime.fromisoformat(target.value) > last.stored_at:
        raise PitrFailed(f"{target.value} is after the newest archived WAL ({last.segment.name(size)}, stored "
                         f"{last.stored_at.isoformat(timespec='seconds')})",
                         "choose an earlier target, or --latest for everything archived; a segment is archived when "
                         "it is full or archive_timeout passes")
    return max(later, key=lambda a: (a.segment.timeline, a.segment.number)).segment


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


# --- the recovered server --------------------------------------------------------------------

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


def _write_recovery(data_dir: Path, settings: dict[str, str]) -> None:
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


def _as_owner(data_dir: Path, cmd: list[str]) -> list[str]:
    """As root, run the server as the user who owns the data directory (restore gives it to postgres)."""
    if os.geteuid() != 0:
        return cmd
    import pwd
    return ["runuser", "-u", pwd.getpwuid(data_dir.stat().st_uid).pw_name, "--", *cmd]


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _private_socket(into: Path) -> Path:
    """A private (0700) directory for the copy's Unix socket and its pg_hba.conf: `local` trust
    first (only the server's OS user and root can reach the socket), then production's own
    rules for 127.0.0.1, so dbops can watch the copy whatever production's password rules are.
    Beside the data directory (removed with it), or in the temporary directory when that path is
    too long: a socket path has about 100 characters at most."""
    beside = into.parent / f".{into.name}.socket"
    if len(str(beside)) < 80 and not beside.exists():
        beside.mkdir(mode=0o700)
        socket_dir = beside
    else:
        socket_dir = Path(tempfile.mkdtemp(prefix="dbops-pitr-"))
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


def _superuser_guess(into: Path) -> list[str]:
    """Roles to try: the OS user that owns the data directory (initdb's default), then postgres."""
    import pwd
    try:
        owner = pwd.getpwuid(into.stat().st_uid).pw_name
    except KeyError:
        return ["postgres"]
    return list(dict.fromkeys([owner, "postgres"]))


def _wait_for_target(port: int, target: RecoveryTarget, log_file: Path, server_alive: Callable[[], bool],
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
                             f"{_log_tail(log_file)}",
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


def pitr(ctx: FleetContext, target_name: str, into: Path, port: int, target: RecoveryTarget, config_path: Path,
         log: Callable[[str], None] = lambda line: None, timeout: float = 3600.0,
         backup_id: str | None = None) -> PitrResult:
    cfg = ctx.config
    cluster = cfg.server_of(target_name)
    into = Path(os.path.abspath(into))
    if not _port_free(port):
        raise ConfigError(f"port {port} is in use on 127.0.0.1", "choose a free port for the recovered copy")
    if into.exists() and (not into.is_dir() or any(into.iterdir())):
        raise ConfigError(f"{into} exists and is not an empty directory", "recover into a new directory; nothing was changed")
    t0 = time.monotonic()
    info = archive_info(ctx, cluster)
    size = int(info["wal_segment_size"])
    # Only base backups of the cluster that owns the archive: after a re-initdb under the same
    # name, the old cluster's WAL cannot replay on the new one's backups (or the other way round).
    entries = [e.manifest for e in list_base_backups(ctx, cluster)
               if e.valid and e.manifest and str(e.manifest.system_identifier) == str(info.get("system_identifier"))]
    base = choose_base_backup(entries, target, backup_id)
    newest = check_archive_reaches(base, archived_segments(ctx, cluster, size), target, size)
    log(f"restoring base backup {base.backup_id} (consistent from {base.stop_time}) into {into}")
    restored = restore_base_backup(ctx, base, into)
    if not (into / "postgresql.conf").exists():
        raise PitrFailed(f"the base backup has no postgresql.conf (the server keeps its configuration outside the data "
                         f"directory, as Debian's /etc/postgresql does); {into} holds the restored files, not started",
                         f"copy the server's postgresql.conf and pg_hba.conf into {into}, then run `dbops pitr` again "
                         "into a new directory, or start it by hand with the recovery settings of docs/pitr.md")
    socket_dir = _private_socket(into)
    _write_recovery(into, recovery_settings(cluster, config_path.resolve(), port, target, socket_dir))
    log_file = into / "dbops_pitr.log"
    log_file.touch()
    if os.geteuid() == 0:
        os.chown(log_file, into.stat().st_uid, into.stat().st_gid)
    pg_ctl = str(find_binary("pg_ctl", int(base.server_version.split(".")[0]), cfg.defaults.pg_bin_dir, error=PitrFailed))
    started = subprocess.run(_as_owner(into, [pg_ctl, "start", "-D", str(into), "-l", str(log_file), "-W"]),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             cwd=str(into))
    if started.returncode != 0:
        raise PitrFailed(f"the recovered server did not start: {started.stdout.strip()}\n{_log_tail(log_file)}",
                         f"fix the cause and start it with pg_ctl start -D {into}, or remove {into} and try again")
    log(f"server started on 127.0.0.1:{port}; recovering to {target.describe()}")

    seen = [False]
    launched = time.monotonic()

    def alive() -> bool:
        # pg_ctl -W returns before the postmaster writes its pid file: not running yet is only
        # "stopped" once it was seen running, or after a generous start-up allowance.
        running = subprocess.run(_as_owner(into, [pg_ctl, "status", "-D", str(into)]), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL).returncode == 0
        seen[0] = seen[0] or running
        return running or (not seen[0] and time.monotonic() - launched < 30)

    state, lsn, at, tli = _wait_for_target(port, target, log_file, alive, timeout, log, socket_dir, _superuser_guess(into))
    if target.kind == "latest" and parse_lsn(lsn) < newest.number * size:
        # Recovery ended before the archive's newest segment: something after it could not be
        # read. The copy is open, but it is not "the end of the archive".
        raise PitrFailed(f"recovery stopped at {lsn}, before the archive's newest segment {newest.name(size)}: WAL after "
                         f"that point could not be replayed. The copy on 127.0.0.1:{port} is open but incomplete. Its log:\n"
                         f"{_log_tail(log_file)}", "run `dbops wal verify TARGET` to find the damaged or missing segment")
    return PitrResult(cluster=cluster, target=target.describe(), base_backup=base.backup_id, data_dir=str(into),
                      port=port, reached_lsn=lsn, last_transaction_at=at, timeline=tli, state=state,
                      rto_seconds=round(time.monotonic() - t0, 3), restore_seconds=round(restored.seconds, 3),
                      stop_command=" ".join(_as_owner(into, [pg_ctl, "stop", "-D", str(into)])))
