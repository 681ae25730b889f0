"""Operations on a configured fleet, shared by the `dbops` CLI and the Dagster layer: resolve a
target's settings from the context, then call the core."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from dbops_pipelines.backup.catalog import LEFTOVER_AGE, BackupEntry, delete_backup
from dbops_pipelines.backup.engine import BackupOptions, run_backup
from dbops_pipelines.backup.manifest import BackupManifest
from dbops_pipelines.backup.migrate import legacy_backups
from dbops_pipelines.backup.retention import RetentionPlan, plan_retention
from dbops_pipelines.context import FleetContext
from dbops_pipelines.errors import StorageError
from dbops_pipelines.inventory import inventory
from dbops_pipelines.progress import Progress
from dbops_pipelines.storage.namespaces import BACKUPS


def backup_options(ctx: FleetContext, target: str, kind: str | None = None, tables: tuple[str, ...] = ()) -> BackupOptions:
    cfg = ctx.config
    t = cfg.target(target)
    kind = kind or ("tables" if tables else t.kind)
    return BackupOptions(
        kind=kind,
        tables=(tuple(tables) or tuple(t.tables)) if kind == "tables" else (),
        exclude_table_data=tuple(t.exclude_table_data),
        connect_retries=cfg.defaults.connect_retries,
        pg_bin_dir=cfg.defaults.pg_bin_dir,
        zstd_level=cfg.defaults.compression_level,
        checksum_max_bytes=cfg.verification_for(target).checksum_max_bytes,
    )


def backup_target(
    ctx: FleetContext,
    target: str,
    kind: str | None = None,
    tables: tuple[str, ...] = (),
    progress: Callable[[Progress], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
    progress_interval: float = 5.0,
) -> BackupManifest:
    settings = ctx.config.target(target)
    return run_backup(target, settings.dsn, ctx.store, ctx.write_key,
                      backup_options(ctx, target, kind, tables), progress=progress, on_warning=on_warning,
                      progress_interval=progress_interval)


def kept_kinds(ctx: FleetContext, target: str) -> tuple[str, ...]:
    """Full backups always keep their slots; a target configured for partial backups keeps its
    own kind's slots too."""
    kind = ctx.config.target(target).kind
    return ("full",) if kind == "full" else ("full", kind)


@dataclass
class RetentionOutcome:
    plan: RetentionPlan
    deleted: list[str] = field(default_factory=list)
    swept: list[str] = field(default_factory=list)   # leftovers of killed writers

    @property
    def blocked(self) -> dict[str, tuple[str, ...]]:
        return dict(self.plan.blocked)


def apply_retention(ctx: FleetContext, target: str | None = None, dry_run: bool = False,
                    now: datetime | None = None) -> RetentionOutcome:
    """Plan and apply retention. Targets whose state is not fully known are left untouched and
    reported in ``outcome.blocked``; callers must treat that as a failure that needs a person."""
    now = now or datetime.now(timezone.utc)
    targets = [target] if target else sorted(ctx.config.targets)
    for t in targets:
        if legacy_backups(ctx.store, t):
            raise StorageError(f"the store holds backups of {t} in the layout of dbops before 0.2 (<target>/<backup_id>/)",
                               "run `dbops store migrate` once to move them under backups/; retention did nothing")
    entries: list[BackupEntry] = inventory(ctx, target, now)
    seen = {e.target for e in entries}
    overrides = {t: ctx.config.retention_for(t) for t in seen if t in ctx.config.targets}
    kinds = {t: kept_kinds(ctx, t) for t in seen if t in ctx.config.targets}
    plan = plan_retention([e.to_record() for e in entries], ctx.config.defaults.retention.policy(), now, overrides, kinds)
    outcome = RetentionOutcome(plan)
    if dry_run:
        return outcome
    by_id = {(e.target, e.backup_id): e for e in entries}
    for decision in plan.to_delete:
        delete_backup(ctx.store, by_id[(decision.target, decision.backup_id)])
        outcome.deleted.append(decision.backup_id)
    outcome.swept = ctx.store.sweep_leftovers(BACKUPS + (f"{target}/" if target else ""), LEFTOVER_AGE)
    return outcome
