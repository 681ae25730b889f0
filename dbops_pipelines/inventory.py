"""The inventory of a store: every backup with the outcome of its newest authenticated restore
verification. It joins the backup catalog and the verification reports, so neither of those
core packages imports the other."""

from __future__ import annotations

from datetime import datetime, timezone

from dbops_pipelines.backup.catalog import UNKNOWN, BackupEntry, group_objects, list_backups, read_entry
from dbops_pipelines.errors import IntegrityError, StorageError
from dbops_pipelines.backup.manifest import parse_backup_id
from dbops_pipelines.storage.namespaces import backups_of
from dbops_pipelines.context import FleetContext
from dbops_pipelines.verification.report import latest_reports, newest_passing_report, summary


def inventory(ctx: FleetContext, target: str | None = None, now: datetime | None = None) -> list[BackupEntry]:
    """Newest first, each valid entry with its verification summary (``entry.verified``)."""
    keys = ctx.read_keys
    reports = latest_reports(ctx.store, keys, target)
    return [e.with_verification(summary(reports[e.backup_id])) if e.valid and e.backup_id in reports else e
            for e in list_backups(ctx.store, keys, target, now)]


def last_backup_at(ctx: FleetContext, target: str, kinds: tuple[str, ...] = ("full",),
                   now: datetime | None = None) -> datetime | None:
    """When the newest valid backup of ``target`` of one of ``kinds`` finished, from what exists
    in the store (backups made by the CLI count; for a target configured for full backups, a
    partial one does not reset the RPO clock). Reads manifests newest first and stops at the
    first valid one, so an alert tick costs one listing and a few small reads per target.
    A newer backup whose manifest could not be read (store error, key not configured) raises: it
    may be the newest valid backup, and "stale" or "fresh" would both be guesses. One proven
    invalid (IntegrityError: altered, wrong size) is skipped: it is no backup."""
    now = now or datetime.now(timezone.utc)
    keys = ctx.read_keys
    groups = sorted(group_objects(ctx.store.list(backups_of(target))).items(), key=lambda kv: kv[0][1], reverse=True)
    for (tgt, bid), objs in groups:
        entry = read_entry(ctx.store, keys, tgt, bid, parse_backup_id(bid)[1], objs, now)
        if entry.state == UNKNOWN and entry.error is not None and not isinstance(entry.error, IntegrityError):
            # Could not be read or trusted for a reason that may pass (store, key): cannot judge.
            # An IntegrityError is proof it is not valid: skip it, as a missing backup.
            raise StorageError(f"backup {bid} of {target}, newer than any valid one, cannot be judged: {entry.error.message}",
                               entry.error.hint)
        if entry.valid and entry.kind in kinds:
            return datetime.fromisoformat(entry.manifest.finished_at)
    return None


def last_verified_at(ctx: FleetContext, target: str) -> datetime | None:
    """When the newest authenticated verification report of ``target`` that passed was made."""
    report = newest_passing_report(ctx.store, ctx.read_keys, target)
    return datetime.fromisoformat(report.verified_at) if report else None
