"""The inventory of a store: every backup with the outcome of its newest authenticated restore
verification. It joins the backup catalog and the verification reports, so neither of those
core packages imports the other."""

from __future__ import annotations

from datetime import datetime, timezone

from dbops_pipelines.backup.catalog import BackupEntry, group_objects, list_backups, read_entry
from dbops_pipelines.backup.manifest import parse_backup_id
from dbops_pipelines.storage.namespaces import backups_of
from dbops_pipelines.context import FleetContext
from dbops_pipelines.verification.report import latest_reports, summary


def inventory(ctx: FleetContext, target: str | None = None, now: datetime | None = None) -> list[BackupEntry]:
    """Newest first, each valid entry with its verification summary (``entry.verified``)."""
    keys = ctx.read_keys
    reports = latest_reports(ctx.store, keys, target)
    return [e.with_verification(summary(reports[e.backup_id])) if e.valid and e.backup_id in reports else e
            for e in list_backups(ctx.store, keys, target, now)]


def last_full_backup_at(ctx: FleetContext, target: str, now: datetime | None = None) -> datetime | None:
    """When the newest valid *full* backup of ``target`` finished, from what exists in the store
    (backups made by the CLI count; a partial backup does not reset a full backup's RPO clock).
    Reads manifests newest first and stops at the first valid full one, so an alert tick costs
    one listing and a few small reads per target, not every manifest."""
    now = now or datetime.now(timezone.utc)
    keys = ctx.read_keys
    groups = sorted(group_objects(ctx.store.list(backups_of(target))).items(), key=lambda kv: kv[0][1], reverse=True)
    for (tgt, bid), objs in groups:
        entry = read_entry(ctx.store, keys, tgt, bid, parse_backup_id(bid)[1], objs, now)
        if entry.valid and entry.kind == "full":
            return datetime.fromisoformat(entry.manifest.finished_at)
    return None


def last_verified_at(ctx: FleetContext, target: str) -> datetime | None:
    """When the newest authenticated verification report of ``target`` that passed was made."""
    passing = [r for r in latest_reports(ctx.store, ctx.read_keys, target).values() if r.passed]
    return max((datetime.fromisoformat(r.verified_at) for r in passing), default=None)
