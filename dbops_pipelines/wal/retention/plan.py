"""The policy, the archive's objects as WAL files and the pure planner ``plan_wal_retention`` (no
I/O) of WAL retention; see the package docstring (dbops_pipelines.wal.retention)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol

from dbops_pipelines.backup.catalog import VALID
from dbops_pipelines.backup.retention import (
    DELETE_NOT_NEEDED,
    KEEP_BLOCKED,
    BackupRecord,
    RetentionDecision,
    RetentionPolicy,
    plan_retention,
)
from dbops_pipelines.wal.naming import (
    BACKUP_HISTORY,
    HISTORY,
    PARTIAL,
    SEGMENT,
    archive_key,
    cluster_prefix,
    parse_lsn,
    segment_of,
)

if TYPE_CHECKING:
    from dbops_pipelines.config import FleetConfig
    from dbops_pipelines.storage.base import ObjectInfo

OBJECT_SUFFIX = ".zst.aes"   # archive objects: <name>.zst.aes (wal.archive's objects)
SEGMENT_KIND, PARTIAL_KIND, BACKUP_KIND, HISTORY_KIND = "segment", "partial", "backup_history", "history"
KEEP_HISTORY = "timeline history files are always kept"
_LABEL_START = re.compile(r"^START WAL LOCATION: ([0-9A-Fa-f]+/[0-9A-Fa-f]+) \(file ([0-9A-F]{24})\)", re.M)


# --- the policy -------------------------------------------------------------------------------

@dataclass(frozen=True)
class WalRetentionPolicy:
    """Base backups by GFS (``gfs``), or by count when ``keep_last`` is set (the GFS slot counts
    are then unused; ``gfs.min_age_days`` still applies)."""

    gfs: RetentionPolicy = field(default_factory=RetentionPolicy)
    keep_last: int | None = None

    def __post_init__(self) -> None:
        if self.keep_last is not None and (isinstance(self.keep_last, bool) or not isinstance(self.keep_last, int)
                                           or self.keep_last < 1):
            raise ValueError(f"WalRetentionPolicy.keep_last must be an integer >= 1 or None, got {self.keep_last!r}")

    def describe(self) -> str:
        floor = f", nothing younger than {self.gfs.min_age_days} days" if self.gfs.min_age_days else ""
        if self.keep_last is not None:
            return f"the newest {self.keep_last} valid base backup(s){floor}"
        g = self.gfs
        return f"{g.keep_daily} daily, {g.keep_weekly} weekly, {g.keep_monthly} monthly{floor}"

    def to_dict(self) -> dict[str, Any]:
        return {**{f.name: getattr(self.gfs, f.name) for f in fields(self.gfs)}, "keep_last": self.keep_last}


def wal_retention_policy(cfg: FleetConfig, cluster: str, keep_last: int | None = None) -> WalRetentionPolicy:
    """The policy of ``cluster``'s base backups: each target's ``wal.retention`` key by key over
    ``defaults.backup.retention``. Targets on one cluster share its archive, so when several set
    it differently the largest value of each key applies (keeping more is the safe side)."""
    base = cfg.defaults.backup.retention
    layers = [t.wal.retention for name, t in sorted(cfg.targets.items())
              if t.wal is not None and cfg.server_of(name) == cluster]
    merged: list[dict[str, Any]] = []
    for layer in layers or [None]:
        values = base.model_dump()
        if layer is not None:
            values.update({k: getattr(layer, k) for k in layer.model_fields_set})
        merged.append(values)
    names = [f.name for f in fields(RetentionPolicy)]
    gfs = RetentionPolicy(**{n: max(m[n] for m in merged) for n in names})
    if keep_last is None:   # a `keep_last` key, should the settings gain one
        counts = [m["keep_last"] for m in merged if m.get("keep_last") is not None]
        keep_last = max(counts) if counts else None
    return WalRetentionPolicy(gfs, keep_last)


# --- the archive's objects --------------------------------------------------------------------

@dataclass(frozen=True)
class WalObject:
    name: str                                 # the WAL file's name, e.g. 000000010000000000000003
    key: str
    size: int                                 # stored bytes
    kind: str                                 # segment, partial, backup_history, history
    timeline: int
    position: tuple[int, int] | None          # (log, seg) of its segment; None for history files

    @property
    def order(self) -> tuple:
        """Oldest first: by position, then timeline, then name (history files last)."""
        return (self.position is None, self.position or (0, 0), self.timeline, self.name)


def _position(segment_name: str) -> tuple[int, int]:
    return int(segment_name[8:16], 16), int(segment_name[16:24], 16)


def classify(objects: Iterable[ObjectInfo]) -> tuple[list[WalObject], list[str]]:
    """The archive's objects as WAL files, and the keys of those that are not one (never
    deleted). A key must be exactly where naming.archive_key puts its name."""
    wal, other = [], []
    for obj in objects:
        leaf = obj.key.rsplit("/", 1)[-1]
        name = leaf[:-len(OBJECT_SUFFIX)] if leaf.endswith(OBJECT_SUFFIX) else ""
        try:
            expected_tail = archive_key("x", name)[len(cluster_prefix("x")):]   # archive/<group>/<name>.zst.aes
        except ValueError:
            expected_tail = None
        if not expected_tail or not obj.key.endswith("/" + expected_tail):
            other.append(obj.key)
            continue
        if HISTORY.fullmatch(name):
            wal.append(WalObject(name, obj.key, obj.size, HISTORY_KIND, int(name[:8], 16), None))
            continue
        kind = (SEGMENT_KIND if SEGMENT.fullmatch(name) else PARTIAL_KIND if PARTIAL.fullmatch(name)
                else BACKUP_KIND if BACKUP_HISTORY.fullmatch(name) else None)
        if kind is None:
            other.append(obj.key)
            continue
        wal.append(WalObject(name, obj.key, obj.size, kind, int(name[:8], 16), _position(name[:24])))
    return sorted(wal, key=lambda o: o.order), sorted(other)


# --- the plan ---------------------------------------------------------------------------------

class _Manifest(Protocol):
    timeline: int
    start_lsn: str
    backup_label: str
    system_identifier: str


class _Entry(Protocol):   # wal.basebackup.BaseBackupEntry
    backup_id: str
    cluster: str
    state: str
    started_at: datetime
    manifest: _Manifest | None

    @property
    def problem(self) -> str | None: ...


def start_segment(manifest: _Manifest, segment_size: int | None = None) -> str:
    """The name of the segment holding the base backup's start LSN: backup_label's own
    ``(file ...)`` (independent of the segment size), checked against the manifest's start LSN,
    timeline and (when known) the archive's segment size. ValueError when it cannot be trusted."""
    m = _LABEL_START.search(manifest.backup_label or "")
    try:
        start = parse_lsn(manifest.start_lsn)
    except (ValueError, TypeError, AttributeError):
        raise ValueError(f"its start LSN {manifest.start_lsn!r} cannot be read") from None
    if m:
        name = m[2]
        if parse_lsn(m[1]) != start or int(name[:8], 16) != manifest.timeline:
            raise ValueError(f"its backup_label starts at {m[1]} on timeline {int(name[:8], 16)}, its manifest at "
                             f"{manifest.start_lsn} on timeline {manifest.timeline}")
        sizes = [segment_size] if segment_size else [1 << p for p in range(20, 31)]   # PostgreSQL allows 1 MiB .. 1 GiB
        if not any(segment_of(start, manifest.timeline, size).name(size) == name for size in sizes):
            raise ValueError(f"its start segment {name} does not hold {manifest.start_lsn}"
                             + (f" with the archive's segments of {segment_size} bytes" if segment_size else ""))
        return name
    if segment_size:
        return segment_of(start, manifest.timeline, segment_size).name(segment_size)
    raise ValueError("its backup_label names no start file and the archive's segment size is unknown")


@dataclass(frozen=True)
class WalRetentionPlan:
    cluster: str
    policy: WalRetentionPolicy
    base: tuple[RetentionDecision, ...]          # newest first
    starts: dict[str, str]                       # valid base backup id -> its start segment
    blocked: tuple[str, ...]                     # why nothing at all is deleted (empty: not blocked)
    cutoff_segment: str | None                   # WAL at an earlier position goes; None: no WAL goes
    cutoff_backup_id: str | None                 # the kept base backup that sets it
    wal_delete: tuple[WalObject, ...]            # oldest first
    wal_keep: tuple[WalObject, ...]              # oldest first
    unrecognised: tuple[str, ...]                # keys under archive/ that are not WAL files: kept
    wal_note: str                                # why the WAL that is kept is kept

    @property
    def base_to_delete(self) -> list[RetentionDecision]:
        return [d for d in self.base if not d.keep]

    @property
    def base_to_keep(self) -> list[RetentionDecision]:
        return [d for d in self.base if d.keep]

    @property
    def wal_delete_bytes(self) -> int:
        return sum(o.size for o in self.wal_delete)

    @property
    def wal_keep_bytes(self) -> int:
        return sum(o.size for o in self.wal_keep)

    @staticmethod
    def _span(objs: Sequence[WalObject]) -> dict[str, Any]:
        by_kind: dict[str, int] = {}
        for o in objs:
            by_kind[o.kind] = by_kind.get(o.kind, 0) + 1
        positioned = [o for o in objs if o.kind == SEGMENT_KIND] or [o for o in objs if o.position is not None]
        return {"count": len(objs), "bytes": sum(o.size for o in objs), "by_kind": by_kind,
                "first": positioned[0].name if positioned else None, "last": positioned[-1].name if positioned else None}

    def to_dict(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster, "policy": self.policy.to_dict(), "blocked": list(self.blocked),
            "base_backups": [{"backup_id": d.backup_id, "started_at": d.started_at.isoformat(), "keep": d.keep,
                              "reasons": list(d.reasons), "start_segment": self.starts.get(d.backup_id)} for d in self.base],
            "cutoff_segment": self.cutoff_segment, "cutoff_backup_id": self.cutoff_backup_id, "wal_note": self.wal_note,
            "wal_delete": {**self._span(self.wal_delete), "names": [o.name for o in self.wal_delete]},
            "wal_keep": self._span(self.wal_keep), "unrecognised": list(self.unrecognised),
        }

    def summary(self) -> str:
        lines = [f"WAL retention of cluster {self.cluster} (base backups: {self.policy.describe()})"]
        for why in self.blocked:
            lines.append(f"RETENTION STOPPED, nothing deleted: {why}")
        lines.append(f"base backups: {len(self.base)}, keep {len(self.base_to_keep)}, delete {len(self.base_to_delete)}")
        for d in self.base:
            start = f"  start {self.starts[d.backup_id]}" if d.backup_id in self.starts else ""
            lines.append(f"  {'KEEP' if d.keep else 'DELETE':<6} {d.backup_id}  {d.started_at.isoformat()}{start}  "
                         f"{'; '.join(d.reasons)}")
        gone, kept = self._span(self.wal_delete), self._span(self.wal_keep)
        kinds = lambda s: ", ".join(f"{k.replace('_', ' ')}: {n}" for k, n in sorted(s["by_kind"].items()))  # noqa: E731
        if gone["count"]:
            lines.append(f"WAL: DELETE {gone['count']} object(s), {_mib(gone['bytes'])} ({kinds(gone)}): "
                         f"{gone['first']} .. {gone['last']}")
        else:
            lines.append("WAL: delete nothing")
        span = f": {kept['first']} .. {kept['last']}" if kept["first"] else ""
        lines.append(f"WAL: keep {kept['count']} object(s), {_mib(kept['bytes'])}"
                     f"{' (' + kinds(kept) + ')' if kept['count'] else ''}{span}")
        lines.append(f"  why: {self.wal_note}")
        if self.unrecognised:
            lines.append(f"  {len(self.unrecognised)} object(s) under archive/ are not WAL files dbops wrote; never deleted: "
                         + ", ".join(self.unrecognised[:5]) + (" ..." if len(self.unrecognised) > 5 else ""))
        return "\n".join(lines)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n} bytes"


def _base_decisions(records: list[BackupRecord], cluster: str, policy: WalRetentionPolicy,
                    now: datetime) -> tuple[list[RetentionDecision], tuple[str, ...]]:
    if policy.keep_last is None:
        plan = plan_retention(records, policy.gfs, now)
        return list(plan.decisions), plan.blocked.get(cluster, ())
    none = replace(policy.gfs, keep_daily=0, keep_weekly=0, keep_monthly=0)
    plan = plan_retention(records, none, now)
    newest = [r.backup_id for r in sorted(records, key=lambda r: (r.started_at, r.backup_id), reverse=True)
              if r.effective_state == VALID and r.started_at <= now][:policy.keep_last]
    label = f"one of the newest {policy.keep_last} valid base backups"
    decisions = []
    for d in plan.decisions:
        if plan.blocked:
            decisions.append(d)
        elif d.backup_id in newest:
            decisions.append(replace(d, keep=True, reasons=(label, *(r for r in d.reasons if r != DELETE_NOT_NEEDED))))
        elif not d.keep and DELETE_NOT_NEEDED in d.reasons:
            decisions.append(replace(d, reasons=tuple(f"not among the newest {policy.keep_last} valid base backups"
                                                      if r == DELETE_NOT_NEEDED else r for r in d.reasons)))
        else:
            decisions.append(d)
    return decisions, plan.blocked.get(cluster, ())


def plan_wal_retention(entries: Iterable[_Entry], archived_objects: Iterable[ObjectInfo],
                       policy: WalRetentionPolicy | RetentionPolicy, now: datetime, *, cluster: str | None = None,
                       segment_size: int | None = None, system_identifier: str | None = None,
                       blocked_by: Iterable[str] = ()) -> WalRetentionPlan:
    """What to delete of one cluster's base backups and archive (see the module docstring).

    ``entries``: its base backups (``list_base_backups``); ``archived_objects``: the store's
    listing of ``wal/<cluster>/archive/``; ``segment_size`` and ``system_identifier``: the
    archive's (``archive.info``), checked against the base backups when given; ``blocked_by``:
    reasons found by the caller to delete nothing. Raises ValueError for a naive ``now``.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now is a naive datetime ({now.isoformat()}); pass a timezone-aware UTC datetime")
    now = now.astimezone(timezone.utc)
    pol = policy if isinstance(policy, WalRetentionPolicy) else WalRetentionPolicy(policy)
    entries = list(entries)
    cluster = cluster if cluster is not None else (entries[0].cluster if entries else "")
    blocked = list(blocked_by)

    starts: dict[str, str] = {}
    for e in entries:
        if e.state != VALID:
            continue
        m = e.manifest
        if m is None:
            blocked.append(f"base backup {e.backup_id} is listed as valid without a manifest")
            continue
        try:
            starts[e.backup_id] = start_segment(m, segment_size)
        except ValueError as exc:
            blocked.append(f"base backup {e.backup_id}: the WAL it needs cannot be established: {exc}")
        if system_identifier and str(m.system_identifier) != str(system_identifier):
            blocked.append(f"base backup {e.backup_id} is of the cluster with system identifier {m.system_identifier}, "
                           f"but the archive belongs to {system_identifier}")

    records = [BackupRecord(e.backup_id, cluster, e.started_at, e.state == VALID, state=e.state, problem=e.problem)
               for e in entries]
    decisions, unknown = _base_decisions(records, cluster, pol, now)
    if unknown:
        blocked.insert(0, f"{len(unknown)} base backup(s) in an unknown state ({'; '.join(unknown)})")
    wal, other = classify(archived_objects)

    if blocked:
        decisions = [d if d.keep else replace(d, keep=True, reasons=(KEEP_BLOCKED,)) for d in decisions]
        return WalRetentionPlan(cluster, pol, tuple(decisions), starts, tuple(blocked), None, None, (), tuple(wal),
                                tuple(other), "retention stopped for this cluster: nothing is deleted until someone looks")

    kept = [d.backup_id for d in decisions if d.keep and d.backup_id in starts]
    if not kept:
        note = ("no valid base backup: no WAL is deleted (it may be all there is to recover from; take a base backup)"
                if wal else "no valid base backup")
        return WalRetentionPlan(cluster, pol, tuple(decisions), starts, (), None, None, (), tuple(wal), tuple(other), note)

    cutoff_id = min(kept, key=lambda b: (_position(starts[b]), int(starts[b][:8], 16), b))
    cutoff = starts[cutoff_id]
    limit = _position(cutoff)
    delete = tuple(o for o in wal if o.position is not None and o.position < limit)
    keep = tuple(o for o in wal if o.position is None or o.position >= limit)
    note = (f"the oldest kept base backup {cutoff_id} starts in {cutoff}: WAL from there on (every timeline) is kept; "
            f"{KEEP_HISTORY}")
    return WalRetentionPlan(cluster, pol, tuple(decisions), starts, (), cutoff, cutoff_id, delete, keep, tuple(other), note)
