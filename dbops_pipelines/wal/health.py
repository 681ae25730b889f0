"""The health of a target's WAL archiving, judged on the server (docs/alerts.md#archive-health).

What makes point-in-time recovery impossible, or fills the disk, long before anyone restores:

- ``wal_archiving_off``: archiving is not on, or ``archive_command`` is not ``dbops wal-push``
  (critical when the target has a ``wal`` section: its PITR depends on it);
- ``wal_archive_failing``: ``pg_stat_archiver``'s latest attempt failed (the last failure is newer
  than the last success);
- ``wal_archive_stale``: WAL was written after the last archived segment, and that segment is
  older than ``wal.max_archive_age_minutes`` (what is not archived is lost with the server);
- ``wal_ready_backlog``: more ``.ready`` files in ``pg_wal/archive_status`` than
  ``wal.max_ready_files`` (archiving does not keep up);
- ``pg_wal_large``: ``pg_wal`` holds more than ``wal.max_pg_wal_bytes``;
- ``wal_health_limited``: the monitor role may not read something (``pg_ls_waldir()`` and
  ``pg_ls_archive_statusdir()`` need ``pg_monitor`` on PostgreSQL 15), so that part is not judged.

Each threshold gives a warning above it and a critical at ``CRITICAL_FACTOR`` times it. The
server is read through the target's monitor role (``roles.monitor``, else its DSN), read-only,
in a handful of cheap statements; ``judge`` is the pure part, over plain ``ArchiveFacts``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime

import psycopg

from dbops_pipelines.config import WalSettings
from dbops_pipelines.errors import DbopsError
from dbops_pipelines.findings import Finding, by_severity
from dbops_pipelines.pgtools import connect
from dbops_pipelines.redact import redact
from dbops_pipelines.wal.naming import DEFAULT_SEGMENT_SIZE, SEGMENT, parse_lsn, parse_segment

SECTION = "wal"
CODES = ("wal_archiving_off", "wal_archive_failing", "wal_archive_stale", "wal_ready_backlog", "pg_wal_large",
         "wal_health_limited")
CRITICAL_FACTOR = 4          # a threshold exceeded this many times over is critical
APPLICATION_NAME = "dbops wal health"
RUNBOOK = "docs/alerts.md#archive-health"


class ArchiveHealthUnknown(DbopsError):
    """The archive's health could not be read from the server."""


@dataclass(frozen=True)
class ArchiveFacts:
    """What the server says about its WAL and archiving (times on the server's clock)."""

    server_now: datetime
    in_recovery: bool
    archive_mode: str                     # on | off | always
    archive_command: str | None           # None: this role may not read it
    archive_library: str
    wal_lsn: str | None                   # where WAL is: the insert position (a standby: received/replayed)
    segment_size: int
    archived_count: int
    last_archived_wal: str | None
    last_archived_at: datetime | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_at: datetime | None
    stats_reset: datetime | None
    ready_files: int | None               # None: not readable (see limited)
    pg_wal_bytes: int | None
    pg_wal_files: int | None
    role: str = ""                        # the monitor role, quoted as SQL quotes it
    limited: dict[str, str] = field(default_factory=dict)   # what could not be read -> why

    @property
    def archiving(self) -> bool:
        """Whether this server archives at all (archive_mode=on archives only on a primary)."""
        return self.archive_mode == "always" or (self.archive_mode == "on" and not self.in_recovery)

    def to_dict(self) -> dict:
        return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in asdict(self).items()}


# --- reading the server ------------------------------------------------------------------------

_SERVER = """
SELECT now(), pg_is_in_recovery(), current_setting('archive_mode'), current_setting('archive_library'),
       CASE WHEN pg_is_in_recovery() THEN GREATEST(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())
            ELSE pg_current_wal_lsn() END::text,
       pg_size_bytes(current_setting('wal_segment_size')), quote_ident(current_user)
"""
_ARCHIVER = """
SELECT archived_count, last_archived_wal, last_archived_time, failed_count, last_failed_wal, last_failed_time, stats_reset
FROM pg_stat_archiver
"""
_COMMAND = "SELECT current_setting('archive_command')"
_READY = "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'"
_PG_WAL = "SELECT coalesce(sum(size), 0)::bigint, count(*) FROM pg_ls_waldir()"


def _limited_read(conn: psycopg.Connection, query: str, what: str, limited: dict[str, str]):
    """One row, or None when the role may not read it (recorded in ``limited``)."""
    try:
        return conn.execute(query).fetchone()
    except psycopg.errors.InsufficientPrivilege as exc:
        limited[what] = redact(str(exc).strip().splitlines()[0])
        return None


def collect(conn: psycopg.Connection) -> ArchiveFacts:
    """The facts, from an autocommit connection (each statement on its own: a permission error
    on one leaves the others readable)."""
    now, in_recovery, mode, library, wal_lsn, segment_size, role = conn.execute(_SERVER).fetchone()
    archived, last_wal, last_at, failed, failed_wal, failed_at, reset = conn.execute(_ARCHIVER).fetchone()
    limited: dict[str, str] = {}
    command = _limited_read(conn, _COMMAND, "archive_command", limited)
    ready = _limited_read(conn, _READY, "pg_ls_archive_statusdir()", limited)
    pg_wal = _limited_read(conn, _PG_WAL, "pg_ls_waldir()", limited)
    return ArchiveFacts(
        server_now=now, in_recovery=bool(in_recovery), archive_mode=mode, archive_command=command[0] if command else None,
        archive_library=library or "", wal_lsn=wal_lsn, segment_size=int(segment_size or DEFAULT_SEGMENT_SIZE),
        archived_count=int(archived), last_archived_wal=last_wal, last_archived_at=last_at,
        failed_count=int(failed), last_failed_wal=failed_wal, last_failed_at=failed_at, stats_reset=reset,
        ready_files=int(ready[0]) if ready else None,
        pg_wal_bytes=int(pg_wal[0]) if pg_wal else None, pg_wal_files=int(pg_wal[1]) if pg_wal else None,
        role=role, limited=limited)


def read_facts(cfg, target: str) -> ArchiveFacts:
    label = f"target {target}"
    conn = connect(cfg.dsn_for(target, "monitor"), label, retries=cfg.defaults.connect_retries,
                   error=ArchiveHealthUnknown, application_name=APPLICATION_NAME, autocommit=True,
                   options="-c statement_timeout=30000 -c default_transaction_read_only=on")
    try:
        with conn:
            return collect(conn)
    except psycopg.Error as exc:
        raise ArchiveHealthUnknown(f"reading the archive's health from {label} failed: "
                                   f"{redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)}",
                                   "check the server's log and the monitor role's rights; the next check tries again") from None


def archive_health(ctx, target: str) -> list[Finding]:
    """The findings about ``target``'s WAL archiving, worst first; an empty list when healthy."""
    cfg = ctx.config
    settings = cfg.target(target).wal
    return judge(target, read_facts(cfg, target), settings or WalSettings(),
                 required=settings is not None and settings.enabled)


# --- judging (pure) ----------------------------------------------------------------------------

def judge(target: str, facts: ArchiveFacts, settings: WalSettings, required: bool = True) -> list[Finding]:
    """The findings from ``facts`` against ``settings``' thresholds. ``required``: the target has
    a ``wal`` section, so archiving that is off (or not through dbops) is critical, not info."""

    def finding(code: str, severity: str, obj: str, message: str, recommendation: str, sql: str | None = None) -> Finding:
        return Finding(code, severity, target, obj, message, recommendation, sql, SECTION)

    out = _configuration(facts, required, finding)
    if facts.archiving:
        out += _failing(facts, finding)
        out += _stale(facts, settings, finding)
        out += _ready(facts, settings, finding)
    out += _pg_wal(facts, settings, finding)
    out += [finding(
        "wal_health_limited", "warning", what,
        f"the monitor role {facts.role or '(unknown)'} may not read {what}: {why}; "
        + {"archive_command": "whether archiving goes through dbops is not judged",
           "pg_ls_archive_statusdir()": "the number of .ready files is not judged",
           "pg_ls_waldir()": "the size of pg_wal is not judged"}.get(what, "that part is not judged"),
        "Grant the monitor role pg_monitor (PostgreSQL 15 needs it for pg_ls_waldir() and "
        "pg_ls_archive_statusdir()), or set targets.<name>.roles.monitor to a role that has it.",
        f"GRANT pg_monitor TO {facts.role}" if facts.role else None)
        for what, why in sorted(facts.limited.items())]
    return by_severity(out)


def _configuration(facts: ArchiveFacts, required: bool, finding: Callable[..., Finding]) -> list[Finding]:
    severity = "critical" if required else "info"
    setup = ("Set archive_mode = on (needs a restart) and archive_command = 'python -m dbops_pipelines.cli_wal "
             "wal-push %p --target <target>' (a reload), with the server's environment set up as "
             "docs/pitr.md#setting-it-up says; then take a base backup.")
    if facts.archive_mode == "off":
        return [finding("wal_archiving_off", severity, "archive_mode",
                        "archive_mode is off: no WAL is archived, so point-in-time recovery cannot go past the newest "
                        "base backup" + ("" if required else " (this target has no wal section)"), setup)]
    if facts.in_recovery and facts.archive_mode == "on":
        return [finding("wal_archiving_off", "info", "archive_mode",
                        "this server is a standby with archive_mode = on: the primary archives, this server does not",
                        "Judge archive health on the primary; set archive_mode = always here only if this standby "
                        "must archive too.")]
    if facts.archive_library:
        return [finding("wal_archiving_off", severity, "archive_library",
                        f"archive_library = {facts.archive_library!r}: WAL is archived by that library, not by dbops "
                        "wal-push, so the dbops store has no WAL for point-in-time recovery", setup)]
    command = facts.archive_command
    if command is None:
        return []      # not readable: a wal_health_limited finding says so
    if not command.strip() or command.strip() == "(disabled)":
        return [finding("wal_archiving_off", "critical", "archive_command",
                        f"archive_mode = {facts.archive_mode} but archive_command is empty: nothing is archived and "
                        "every WAL file is kept in pg_wal until it is set, until the disk is full", setup)]
    if "wal-push" not in command:
        return [finding("wal_archiving_off", severity, "archive_command",
                        f"archive_command does not run dbops wal-push ({redact(command)[:200]!r}): WAL goes elsewhere, "
                        "so the dbops store has none for point-in-time recovery", setup)]
    return []


def _failing(facts: ArchiveFacts, finding: Callable[..., Finding]) -> list[Finding]:
    if facts.failed_count <= 0 or facts.last_failed_at is None:
        return []
    if facts.last_archived_at is not None and facts.last_failed_at <= facts.last_archived_at:
        return []      # the latest attempt succeeded
    since = (f"the last success was {facts.last_archived_wal} {_age(facts.server_now - facts.last_archived_at)} ago"
             if facts.last_archived_at else "nothing was archived since the statistics were reset")
    return [finding(
        "wal_archive_failing", "critical", "archive_command",
        f"archive_command is failing: {facts.failed_count:,} failures since the statistics were reset, the latest "
        f"for {facts.last_failed_wal} {_age(facts.server_now - facts.last_failed_at)} ago; {since}",
        "Read the server log for wal-push's error (its message says what to do: docs/pitr.md#when-something-fails): "
        "the store unreachable, the key or config missing from the server's environment, a segment already archived "
        "with other content. PostgreSQL retries by itself; until it succeeds no WAL file is removed and pg_wal grows.")]


def archived_end(facts: ArchiveFacts) -> int | None:
    """The LSN up to which WAL is archived: the end of the last archived segment (a .backup or
    .partial file counts for its segment); None when that is not known (nothing archived, or a
    history file last)."""
    name = facts.last_archived_wal
    if not name or not SEGMENT.fullmatch(name[:24]):
        return None
    try:
        return (parse_segment(name[:24], facts.segment_size).number + 1) * facts.segment_size
    except ValueError:
        return None


def unarchived_bytes(facts: ArchiveFacts) -> int | None:
    """WAL written after the last archived segment (what a lost server would take with it)."""
    end = archived_end(facts)
    if end is None or facts.wal_lsn is None:
        return None
    return max(parse_lsn(facts.wal_lsn) - end, 0)


def _stale(facts: ArchiveFacts, settings: WalSettings, finding: Callable[..., Finding]) -> list[Finding]:
    limit = settings.max_archive_age_minutes * 60
    pending = unarchived_bytes(facts)
    since, what = facts.last_archived_at, f"the last archived WAL file ({facts.last_archived_wal})"
    if since is None:
        since, what = facts.stats_reset, "the statistics reset (nothing archived since)"
    if since is None or pending == 0:
        return []      # nothing written since the last archived segment: an idle server is not behind
    age = (facts.server_now - since).total_seconds()
    if age <= limit:
        return []
    severity = "critical" if age > CRITICAL_FACTOR * limit else "warning"
    written = f"{_bytes(pending)} of WAL written since" if pending is not None else "WAL written since"
    return [finding(
        "wal_archive_stale", severity, "",
        f"{written} {what}, {_age_s(age)} ago (threshold {_age_s(limit)}); WAL position {facts.wal_lsn}",
        "What is not archived is lost if the server is: set archive_timeout below max_archive_age_minutes (e.g. "
        "300 s) so a quiet server still archives; if archiving is failing or slow, see wal_archive_failing and "
        "wal_ready_backlog.")]


def _ready(facts: ArchiveFacts, settings: WalSettings, finding: Callable[..., Finding]) -> list[Finding]:
    limit = settings.max_ready_files
    if facts.ready_files is None or facts.ready_files <= limit:
        return []
    severity = "critical" if facts.ready_files > CRITICAL_FACTOR * limit else "warning"
    return [finding(
        "wal_ready_backlog", severity, "pg_wal/archive_status",
        f"{facts.ready_files:,} WAL files wait to be archived (.ready; threshold {limit:,}): archiving does not keep up "
        f"(about {_bytes(facts.ready_files * facts.segment_size)} held in pg_wal)",
        "If archive_command fails, fix that first (wal_archive_failing). Otherwise archiving is too slow for the "
        "write load: raise wal.push_parallel (more segments stored at once), lower wal.compression_level, check the "
        "store's throughput from the database host (docs/pitr.md#speed), and watch pg_wal's free space.")]


def _pg_wal(facts: ArchiveFacts, settings: WalSettings, finding: Callable[..., Finding]) -> list[Finding]:
    limit = settings.max_pg_wal_bytes
    if facts.pg_wal_bytes is None or facts.pg_wal_bytes <= limit:
        return []
    severity = "critical" if facts.pg_wal_bytes > CRITICAL_FACTOR * limit else "warning"
    return [finding(
        "pg_wal_large", severity, "pg_wal",
        f"pg_wal holds {_bytes(facts.pg_wal_bytes)} in {facts.pg_wal_files:,} files (threshold {_bytes(limit)}); "
        "when its disk is full the server stops",
        "Find what keeps WAL: files not yet archived (wal_ready_backlog, wal_archive_failing), an inactive "
        "replication slot (SELECT slot_name, active, restart_lsn FROM pg_replication_slots), wal_keep_size or "
        "max_wal_size set high. Fix the cause; never delete files from pg_wal by hand. Add disk space if it is "
        "about to fill.")]


def summary(findings: list[Finding]) -> str:
    judged = [f for f in findings if f.severity != "info"]
    if not judged:
        return "archiving is healthy"
    return "; ".join(f"[{f.severity}] {f.code}: {f.message}" for f in by_severity(judged))


def _age(delta) -> str:
    return _age_s(delta.total_seconds())


def _age_s(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _bytes(n: int | None) -> str:
    if n is None:
        return "unknown"
    value = float(n)
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if abs(value) < 1024 or unit == "TB":
            return f"{value:,.0f} {unit}" if unit == "bytes" else f"{value:,.1f} {unit}"
        value /= 1024
    return str(n)
