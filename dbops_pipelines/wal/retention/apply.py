"""Applying WAL retention: list the store, plan (plan.plan_wal_retention) and (unless
``dry_run``) delete; see the package docstring (dbops_pipelines.wal.retention)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from dbops_pipelines.backup.catalog import LEFTOVER_AGE
from dbops_pipelines.backup.retention import RetentionPolicy
from dbops_pipelines.errors import DbopsError, StorageError
from dbops_pipelines.wal.naming import cluster_prefix
from dbops_pipelines.wal.retention.plan import (
    WalRetentionPlan,
    WalRetentionPolicy,
    plan_wal_retention,
    wal_retention_policy,
)

if TYPE_CHECKING:
    from dbops_pipelines.context import FleetContext


# --- applying it ------------------------------------------------------------------------------

@dataclass
class WalRetentionOutcome:
    plan: WalRetentionPlan
    dry_run: bool
    deleted_backups: list[str] = field(default_factory=list)
    deleted_wal: list[str] = field(default_factory=list)
    deleted_wal_bytes: int = 0
    swept: list[str] = field(default_factory=list)
    failed: str | None = None                 # the first failure, which stopped the run

    @property
    def blocked(self) -> tuple[str, ...]:
        return self.plan.blocked

    @property
    def ok(self) -> bool:
        return not (self.blocked or self.failed)

    def to_dict(self) -> dict[str, Any]:
        return {**self.plan.to_dict(), "dry_run": self.dry_run, "deleted_backups": self.deleted_backups,
                "deleted_wal_count": len(self.deleted_wal), "deleted_wal_bytes": self.deleted_wal_bytes,
                "deleted_wal_first": self.deleted_wal[0] if self.deleted_wal else None,
                "deleted_wal_last": self.deleted_wal[-1] if self.deleted_wal else None,
                "swept": self.swept, "failed": self.failed, "ok": self.ok}


def _archive_info(ctx: FleetContext, cluster: str) -> tuple[int | None, str | None, list[str]]:
    """Segment size and system identifier from archive.info; a reason to stop if it cannot be trusted."""
    from dbops_pipelines.wal.archive.identity import info_key, read_archive_info

    try:
        info = read_archive_info(ctx.store, ctx.read_keys, cluster)
    except StorageError:
        raise
    except DbopsError as exc:
        return None, None, [f"{ctx.store.location(info_key(cluster))} cannot be trusted: {exc.message}"]
    if info is None:
        return None, None, []
    try:
        return int(info["wal_segment_size"]), str(info["system_identifier"]), []
    except (KeyError, TypeError, ValueError):
        return None, None, [f"{ctx.store.location(info_key(cluster))} lacks the segment size or system identifier"]


def _delete_order(key: str) -> int:
    from dbops_pipelines.wal.basebackup import DATA_NAME, MANIFEST_NAME

    leaf = key.rsplit("/", 1)[-1]
    return 0 if leaf == MANIFEST_NAME else 1 if leaf == DATA_NAME else 2


def apply_wal_retention(ctx: FleetContext, cluster: str, dry_run: bool = False, now: datetime | None = None,
                        policy: WalRetentionPolicy | RetentionPolicy | None = None) -> WalRetentionOutcome:
    """List, plan and (unless ``dry_run``) delete. A blocked plan deletes nothing; the first failed
    delete stops the run (``outcome.failed``), with what was deleted before it in the outcome.
    Errors of the store while listing propagate: then nothing was deleted."""
    from dbops_pipelines.wal.basebackup import list_base_backups

    now = now or datetime.now(timezone.utc)
    policy = policy if policy is not None else wal_retention_policy(ctx.config, cluster)
    entries = list_base_backups(ctx, cluster, now)
    listing = ctx.store.list(f"{cluster_prefix(cluster)}archive/")
    segment_size, sysid, problems = _archive_info(ctx, cluster)
    plan = plan_wal_retention(entries, listing, policy, now, cluster=cluster, segment_size=segment_size,
                              system_identifier=sysid, blocked_by=problems)
    outcome = WalRetentionOutcome(plan, dry_run)
    if dry_run or plan.blocked:
        return outcome
    by_id = {e.backup_id: e for e in entries}
    for decision in plan.base_to_delete:
        entry = by_id[decision.backup_id]
        for key in sorted(entry.keys, key=_delete_order):   # manifest first: never valid with its data gone
            try:
                ctx.store.delete(key)
            except Exception as exc:  # noqa: BLE001 - stop and report what was done
                outcome.failed = (f"deleting {ctx.store.location(key)} of base backup {entry.backup_id} failed: "
                                  f"{getattr(exc, 'message', None) or exc}; no WAL was deleted")
                return outcome
        outcome.deleted_backups.append(entry.backup_id)
    for obj in plan.wal_delete:   # oldest first: an interrupted run leaves no hole in the middle
        try:
            ctx.store.delete(obj.key)
        except Exception as exc:  # noqa: BLE001
            outcome.failed = (f"deleting WAL {obj.name} ({ctx.store.location(obj.key)}) failed: "
                              f"{getattr(exc, 'message', None) or exc}; it and the newer ones planned were left")
            return outcome
        outcome.deleted_wal.append(obj.name)
        outcome.deleted_wal_bytes += obj.size
    outcome.swept = ctx.store.sweep_leftovers(cluster_prefix(cluster), LEFTOVER_AGE)
    return outcome
