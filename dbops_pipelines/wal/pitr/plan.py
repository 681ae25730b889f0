"""Before anything is restored: which base backup, and whether the archive reaches the target
without a gap (pure logic, plus listing the store)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import datetime

from dbops_pipelines.context import FleetContext
from dbops_pipelines.wal.archive.identity import read_archive_info
from dbops_pipelines.wal.basebackup import BaseBackupManifest
from dbops_pipelines.wal.naming import DEFAULT_SEGMENT_SIZE, SEGMENT, Segment, cluster_prefix, format_lsn, parse_lsn, parse_segment
from dbops_pipelines.wal.pitr.target import PitrFailed, RecoveryTarget

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


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False
