"""verify_archive: what the archive holds, where it has gaps, its timeline switches and the
objects that fail authentication (see the package docstring)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from dbops_pipelines.errors import DbopsError, StorageError
from dbops_pipelines.wal.archive.identity import info_key, read_archive_info
from dbops_pipelines.wal.archive.objects import OBJECT_SUFFIX, read_object
from dbops_pipelines.wal.naming import (
    DEFAULT_SEGMENT_SIZE,
    HISTORY,
    PARTIAL,
    SEGMENT,
    Segment,
    archive_key,
    cluster_prefix,
    format_lsn,
    parse_lsn,
    parse_segment,
)

if TYPE_CHECKING:
    from dbops_pipelines.context import FleetContext


@dataclass
class Gap:
    timeline: int
    first: str
    last: str
    count: int


@dataclass
class Switch:
    timeline: int             # the new timeline
    parent: int
    lsn: str
    segment: str              # the parent's last segment the new timeline needs (holds the byte before lsn)
    reason: str


@dataclass
class TimelineSummary:
    timeline: int
    first: str
    last: str
    segments: int
    checked_from: str | None  # the range searched for gaps
    checked_to: str | None
    ignored_after_switch: int  # segments of this timeline after the last switch away from it


@dataclass
class DamagedObject:
    name: str
    key: str
    error: str


@dataclass
class ArchiveReport:
    cluster: str
    location: str
    quick: bool
    since: str | None
    system_identifier: str | None
    segment_size: int
    objects: int
    stored_bytes: int
    oldest_segment: str | None
    newest_segment: str | None
    timelines: list[TimelineSummary]
    switches: list[Switch]
    gaps: list[Gap]
    damaged: list[DamagedObject]
    problems: list[str]
    seconds: float

    @property
    def ok(self) -> bool:
        return not (self.gaps or self.damaged or self.problems)

    @property
    def missing_segments(self) -> int:
        return sum(g.count for g in self.gaps)

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok, "missing_segments": self.missing_segments}


def _object_name(cluster: str, key: str) -> str | None:
    rest = key[len(f"{cluster_prefix(cluster)}archive/"):]
    group, _, leaf = rest.partition("/")
    if not leaf.endswith(OBJECT_SUFFIX) or "/" in leaf:
        return None
    name = leaf[: -len(OBJECT_SUFFIX)]
    try:
        return name if archive_key(cluster, name) == key else None
    except ValueError:
        return None


def parse_history(text: str) -> list[tuple[int, int, str]]:
    """A timeline history file: (parent timeline, switch LSN, reason) per line, oldest first."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        if len(parts) < 2:
            raise ValueError(f"malformed history line {line!r}")
        out.append((int(parts[0]), parse_lsn(parts[1]), parts[2].strip() if len(parts) > 2 else ""))
    return out


def verify_archive(ctx: FleetContext, cluster: str, since_segment: str | None = None, quick: bool = False,
                   parallel: int = 4) -> ArchiveReport:
    """What the archive holds, where it has gaps, its timeline switches and (unless ``quick``)
    which objects fail authentication. Reads only; changes nothing."""
    t0 = time.monotonic()
    store, keys = ctx.store, ctx.read_keys
    prefix = f"{cluster_prefix(cluster)}archive/"
    listing = store.list(prefix)
    problems: list[str] = []
    damaged: list[DamagedObject] = []
    try:
        info = read_archive_info(store, keys, cluster)
    except DbopsError as exc:
        info = None
        problems.append(f"archive.info cannot be trusted: {exc.message}")
    else:
        if info is None and listing:
            problems.append(f"{store.location(info_key(cluster))} is missing: the archive's owner is unknown")
    if not listing:
        problems.append(f"the archive {store.location(prefix)} is empty: nothing has been archived (is archive_command set?)")
    segment_size = int(info["wal_segment_size"]) if info else DEFAULT_SEGMENT_SIZE
    sysid = str(info["system_identifier"]) if info else None

    names: dict[str, str] = {}
    for obj in listing:
        name = _object_name(cluster, obj.key)
        if name is None:
            problems.append(f"unexpected object {store.location(obj.key)}")
        else:
            names[name] = obj.key

    # Authenticate: every object, or (quick) only the history files, which the timelines need.
    to_read = sorted(names) if not quick else sorted(n for n in names if HISTORY.fullmatch(n))
    histories: dict[int, str] = {}

    def check(name: str) -> tuple[str, dict | None, bytes | None, str | None]:
        parts: list[bytes] = []
        keep = HISTORY.fullmatch(name) is not None
        try:
            header = read_object(store, keys, cluster, name, parts.append if keep else None)
        except StorageError:
            raise                   # the store failed: nothing learnt about the object
        except DbopsError as exc:   # failed authentication or checks, or written with a key not configured
            return name, None, None, exc.message
        return name, header, b"".join(parts) if keep else None, None

    with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="wal-verify") as pool:
        for name, header, body, error in pool.map(check, to_read):
            if error is not None:
                damaged.append(DamagedObject(name, store.location(names[name]), error))
                continue
            if sysid and header.get("system_identifier") not in (None, sysid):
                damaged.append(DamagedObject(name, store.location(names[name]),
                                             f"written by the cluster with system identifier {header.get('system_identifier')}, not {sysid}"))
            if body is not None:
                histories[int(name[:8], 16)] = body.decode("utf-8", "replace")

    # Timeline switches from the history files.
    switches: dict[int, Switch] = {}
    branch_lsn: dict[int, int] = {}           # timeline -> where it branched off its parent
    for tli, text in sorted(histories.items()):
        try:
            entries = parse_history(text)
        except ValueError as exc:
            problems.append(f"history file {tli:08X}.history is malformed: {exc}")
            continue
        for i, (parent, lsn, reason) in enumerate(entries):
            child = entries[i + 1][0] if i + 1 < len(entries) else tli
            if child not in switches:
                switches[child] = Switch(child, parent, format_lsn(lsn), Segment(parent, (max(lsn, 1) - 1) // segment_size).name(segment_size), reason)
                branch_lsn[child] = lsn
    branch_end: dict[int, int] = {}           # parent -> last segment number needed (latest switch away)
    for sw in switches.values():
        branch_end[sw.parent] = max(branch_end.get(sw.parent, -1), (max(branch_lsn[sw.timeline], 1) - 1) // segment_size)

    # Segments present per timeline (a .partial counts: it is what a promotion leaves of the last one).
    present: dict[int, set[int]] = {}
    for name in names:
        base = name[:24] if PARTIAL.fullmatch(name) else name
        if SEGMENT.fullmatch(base):
            try:
                seg = parse_segment(base, segment_size)
            except ValueError:
                problems.append(f"{name} is not a segment of {segment_size} bytes")
                continue
            present.setdefault(seg.timeline, set()).add(seg.number)

    since = None
    if since_segment:
        since = parse_segment(since_segment, segment_size)

    timelines, gaps = [], []
    for tli in sorted(set(present) | set(branch_end)):
        nums = present.get(tli, set())
        if tli > 1 and tli not in histories and nums:
            problems.append(f"timeline {tli} has segments but no history file {tli:08X}.history: recovery cannot follow it")
        if not nums:
            if tli in branch_end and (since is None or branch_end[tli] >= since.number):
                problems.append(f"timeline {tli} has no segments, though timeline(s) branched from it")
            continue
        lo, hi = min(nums), max(nums)
        start = lo
        if tli in branch_lsn:
            start = min(start, branch_lsn[tli] // segment_size)
        end = branch_end.get(tli, hi)
        if since is not None:
            start = max(start, since.number)
        ignored = sum(1 for n in nums if n > end)
        # Runs of missing numbers in [start, end], from the sorted present ones (never a range walk).
        edges = [start - 1, *sorted(n for n in nums if start <= n <= end), end + 1]
        for a, b in zip(edges, edges[1:]):
            if b - a > 1:
                gaps.append(Gap(tli, Segment(tli, a + 1).name(segment_size), Segment(tli, b - 1).name(segment_size), b - a - 1))
        timelines.append(TimelineSummary(
            tli, Segment(tli, lo).name(segment_size), Segment(tli, hi).name(segment_size), len(nums),
            Segment(tli, start).name(segment_size) if start <= end else None,
            Segment(tli, end).name(segment_size) if start <= end else None, ignored))

    segs = sorted((n for n in names if SEGMENT.fullmatch(n)), key=lambda n: (n[8:], n[:8]))
    return ArchiveReport(
        cluster=cluster, location=store.location(cluster_prefix(cluster)), quick=quick, since=since_segment,
        system_identifier=sysid, segment_size=segment_size, objects=len(listing),
        stored_bytes=sum(o.size for o in listing), oldest_segment=segs[0] if segs else None,
        newest_segment=segs[-1] if segs else None, timelines=timelines,
        switches=sorted(switches.values(), key=lambda s: s.timeline), gaps=gaps,
        damaged=sorted(damaged, key=lambda d: d.name), problems=problems, seconds=round(time.monotonic() - t0, 3))
