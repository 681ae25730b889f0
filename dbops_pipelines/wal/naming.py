"""WAL file names and positions, and where each lives in the store (pure logic, no I/O).

A segment is named TTTTTTTTXXXXXXXXYYYYYYYY: timeline, then the segment number split into a
"log" part and a "seg" part (segments_per_log = 0x100000000 // segment_size). A timeline's
history file is TTTTTTTT.history; a base backup's backup-history file is
<segment>.<offset 8 hex>.backup; a partial segment left at a promotion is <segment>.partial.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dbops_pipelines.storage.namespaces import WAL

SEGMENT = re.compile(r"[0-9A-F]{24}")
HISTORY = re.compile(r"[0-9A-F]{8}\.history")
BACKUP_HISTORY = re.compile(r"[0-9A-F]{24}\.[0-9A-F]{8}\.backup")
PARTIAL = re.compile(r"[0-9A-F]{24}\.partial")
DEFAULT_SEGMENT_SIZE = 16 << 20


def is_wal_file(name: str) -> bool:
    """A name PostgreSQL asks to archive or fetch (never a path: no slash, no '..')."""
    return any(p.fullmatch(name) for p in (SEGMENT, HISTORY, BACKUP_HISTORY, PARTIAL))


@dataclass(frozen=True, order=True)
class Segment:
    timeline: int
    number: int          # log * segments_per_log + seg: consecutive segments differ by 1

    def name(self, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
        per_log = segments_per_log(segment_size)
        return f"{self.timeline:08X}{self.number // per_log:08X}{self.number % per_log:08X}"

    def next(self) -> "Segment":
        return Segment(self.timeline, self.number + 1)


def segments_per_log(segment_size: int) -> int:
    return 0x100000000 // segment_size


def parse_segment(name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> Segment:
    if not SEGMENT.fullmatch(name):
        raise ValueError(f"{name!r} is not a WAL segment name")
    log, seg = int(name[8:16], 16), int(name[16:24], 16)
    if seg >= segments_per_log(segment_size):
        raise ValueError(f"{name!r} is not a segment of {segment_size} bytes")
    return Segment(int(name[:8], 16), log * segments_per_log(segment_size) + seg)


def parse_lsn(text: str) -> int:
    """'16/B374D848' -> integer position."""
    m = re.fullmatch(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})", text.strip())
    if not m:
        raise ValueError(f"{text!r} is not an LSN (e.g. 0/3000028)")
    return (int(m[1], 16) << 32) | int(m[2], 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def segment_of(lsn: int, timeline: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> Segment:
    return Segment(timeline, lsn // segment_size)


def cluster_prefix(cluster: str) -> str:
    """wal/<cluster>/: the cluster's name as the config gives it (a key of `clusters`, or
    host:port), with anything but [A-Za-z0-9._-] replaced, so it is one safe path component."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", cluster)
    return f"{WAL}{safe}/"


def archive_key(cluster: str, name: str) -> str:
    """Where an archived WAL file lives: grouped by its first 16 characters (timeline and log) so
    no listing holds more than 256 segments of 16 MiB; history files under history/."""
    if not is_wal_file(name):
        raise ValueError(f"{name!r} is not a WAL file name")
    group = "history" if HISTORY.fullmatch(name) else name[:16]
    return f"{cluster_prefix(cluster)}archive/{group}/{name}.zst.aes"


def base_backup_prefix(cluster: str, backup_id: str | None = None) -> str:
    return f"{cluster_prefix(cluster)}base/" + (f"{backup_id}/" if backup_id else "")
