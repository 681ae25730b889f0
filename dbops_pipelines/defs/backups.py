"""Backups in Dagster: per target, a backup asset, its integrity check, a retention asset,
a job running the three, and a schedule.

One asset per target (not one partitioned asset): each database gets its own freshness and
verification status, its own lineage node and check history, and its own concurrency pool
named after its server, so one server never runs more backups at once than the pool allows
(`concurrency.pools.default_limit` in dagster.yaml). Adding a target to dbops.yaml adds its
assets on the next reload of the code location; no code changes.
"""


import re
from datetime import timedelta

import dagster as dg

from dbops_pipelines import fleet
from dbops_pipelines.backup.catalog import find_backup
from dbops_pipelines.progress import Progress
from dbops_pipelines.backup.integrity import check_backup
from dbops_pipelines.backup.manifest import BackupManifest
from dbops_pipelines.config import FleetConfig
from dbops_pipelines.redact import redact
from dbops_pipelines.defs.resources import DbopsFleet
from dbops_pipelines.errors import DatabaseUnreachable, DbopsError, StorageError

TRANSIENT = (DatabaseUnreachable, StorageError)
MIB = 1 << 20


def backup_asset_key(target: str) -> dg.AssetKey:
    return dg.AssetKey(["backup", target])


def retention_asset_key(target: str) -> dg.AssetKey:
    return dg.AssetKey(["backup_retention", target])


def server_pool(cfg: FleetConfig, target: str) -> str:
    return "pg_server_" + re.sub(r"[^A-Za-z0-9_]", "_", cfg.server_of(target))


def as_failure(exc: DbopsError) -> dg.Failure:
    """Turn a core error into a run failure whose description tells the operator what to do."""
    text = redact(exc.message) + (f"\n\nWhat to do: {exc.hint}" if exc.hint else "")
    return dg.Failure(description=text, metadata={"error": type(exc).__name__}, allow_retries=False)


def manifest_metadata(m: BackupManifest) -> dict:
    seconds = max(m.duration_seconds, 1e-6)
    return {
        "backup_id": m.backup_id,
        "kind": m.kind,
        "size_bytes": dg.MetadataValue.int(m.stored_bytes),
        "raw_bytes": dg.MetadataValue.int(m.raw_bytes),
        "duration_seconds": dg.MetadataValue.float(round(seconds, 3)),
        "throughput_mib_per_s": dg.MetadataValue.float(round(m.raw_bytes / MIB / seconds, 2)),
        "compression_ratio": dg.MetadataValue.float(round(m.raw_bytes / max(m.stored_bytes, 1), 2)),
        "location": dg.MetadataValue.text(m.location),
        "sha256": dg.MetadataValue.text(m.sha256),
        "key_id": m.key_id,
        "tables": dg.MetadataValue.int(len(m.table_rows)),
        "dagster/row_count": dg.MetadataValue.int(m.total_rows),
        "table_rows": dg.MetadataValue.table(
            records=[dg.TableRecord({"table": t, "rows": n}) for t, n in sorted(m.table_rows.items())],
            schema=dg.TableSchema(columns=[dg.TableColumn("table", "string"), dg.TableColumn("rows", "int")]),
        ),
        "server_version": m.server_version,
        "pg_dump_warnings": dg.MetadataValue.int(len(m.pg_dump_warnings)),
    }


class BackupRunConfig(dg.Config):
    """Launchpad options for a one-off backup; leave empty for the target's configured kind."""

    kind: str | None = None
    tables: list[str] = []


def build_backup_asset(cfg: FleetConfig, target: str) -> dg.AssetsDefinition:
    t = cfg.target(target)

    @dg.asset(
        key=backup_asset_key(target),
        group_name="backups",
        kinds={"postgres", "s3"},
        owners=cfg.defaults.owners,
        pool=server_pool(cfg, target),
        tags={"dbops/target": target},
        # The UI shows the asset stale past the RPO; the alert sensor raises the same condition.
        freshness_policy=dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=cfg.rpo_hours_for(target))),
        description=(
            f"Encrypted pg_dump of target `{target}` ({redact(t.dsn)}), kind {t.kind}: pg_dump -Fc streamed "
            "through zstd and AES-256-GCM into the backup store, with a manifest written last. "
            "Metadata: size, duration, throughput, location, sha256, rows per table."
        ),
    )
    def backup(context: dg.AssetExecutionContext, config: BackupRunConfig, dbops: DbopsFleet) -> dg.MaterializeResult:
        ctx = dbops.context()
        fleet_cfg = ctx.config

        def log_progress(p: Progress) -> None:
            context.log.info(f"{target}: {p.raw_bytes / MIB:.1f} MiB dumped, {p.stored_bytes / MIB:.1f} MiB stored, "
                             f"{p.rate / MIB:.1f} MiB/s")

        try:
            manifest = fleet.backup_target(
                ctx, target, config.kind, tuple(config.tables), progress=log_progress,
                on_warning=lambda line: context.log.warning(f"pg_dump: {line}"),
            )
        except TRANSIENT as exc:
            retries = fleet_cfg.defaults.run_retries
            context.log.error(redact(exc.message))
            if context.retry_number < retries:
                raise dg.RetryRequested(
                    max_retries=retries, seconds_to_wait=fleet_cfg.defaults.retry_delay_seconds * 2**context.retry_number
                ) from as_failure(exc)
            raise as_failure(exc) from None
        except DbopsError as exc:
            raise as_failure(exc) from None
        context.log.info(f"backup {manifest.backup_id} stored at {manifest.location} ({manifest.stored_bytes} bytes)")
        return dg.MaterializeResult(metadata=manifest_metadata(manifest))

    return backup


def build_integrity_check(target: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=backup_asset_key(target),
        name="stored_backup_integrity",
        description="Re-reads the newest stored backup, verifies its sha256, decrypts and authenticates every "
        "record, and lists the archive with pg_restore --list.",
    )
    def integrity(context: dg.AssetCheckExecutionContext, dbops: DbopsFleet) -> dg.AssetCheckResult:
        event = context.instance.get_latest_materialization_event(backup_asset_key(target))
        if event is None or "backup_id" not in event.asset_materialization.metadata:
            return dg.AssetCheckResult(passed=False, metadata={"finding": "no backup has been recorded yet"})
        backup_id = event.asset_materialization.metadata["backup_id"].value
        ctx = dbops.context()  # dbops.yaml, the store and the keys, once per evaluation
        try:
            entry = find_backup(ctx.store, ctx.read_keys, backup_id)
            report = check_backup(ctx.store, entry.manifest, ctx.read_keys, ctx.config.defaults.pg_bin_dir)
        except DbopsError as exc:
            return dg.AssetCheckResult(
                passed=False,
                metadata={"backup_id": backup_id, "finding": redact(exc.message), "what_to_do": exc.hint or ""},
            )
        return dg.AssetCheckResult(
            passed=True,
            metadata={
                "backup_id": backup_id,
                "sha256_verified": True,
                "archive_entries": dg.MetadataValue.int(report.toc_entries),
                "tables_with_data": dg.MetadataValue.int(len(report.tables_with_data)),
            },
        )

    return integrity


def build_retention_asset(cfg: FleetConfig, target: str) -> dg.AssetsDefinition:
    policy = cfg.retention_for(target)

    @dg.asset(
        key=retention_asset_key(target),
        deps=[backup_asset_key(target)],
        group_name="backups",
        kinds={"s3"},
        owners=cfg.defaults.owners,
        tags={"dbops/target": target},
        description=(
            f"Applies the retention policy of `{target}` after each backup (keep {policy.keep_daily} daily, "
            f"{policy.keep_weekly} weekly, {policy.keep_monthly} monthly; nothing younger than "
            f"{policy.min_age_days} days; never the newest valid or verified backup). Records what it deleted and why."
        ),
    )
    def retention(context: dg.AssetExecutionContext, dbops: DbopsFleet) -> dg.MaterializeResult:
        try:
            outcome = fleet.apply_retention(dbops.context(), target)
        except DbopsError as exc:
            raise as_failure(exc) from None
        context.log.info(outcome.plan.summary())
        rows = [dg.TableRecord({"backup_id": d.backup_id, "started_at": d.started_at.isoformat(),
                                "action": "keep" if d.keep else "delete", "reasons": "; ".join(d.reasons)})
                for d in outcome.plan.decisions]
        if outcome.blocked:
            # Nothing of this target was deleted; failing the step makes the alert sensor say so.
            raise dg.Failure(
                description=redact(f"retention of {target} stopped, nothing deleted: " + "; ".join(outcome.blocked[target]))
                + "\n\nWhat to do: find out why these backups cannot be read or trusted (`dbops backups list`), fix or "
                "remove them by hand, then run retention again.",
                metadata={"error": "RetentionBlocked"}, allow_retries=False)
        return dg.MaterializeResult(metadata={
            "deleted": dg.MetadataValue.int(len(outcome.deleted)),
            "kept": dg.MetadataValue.int(len(outcome.plan.to_keep)),
            "deleted_ids": dg.MetadataValue.json(outcome.deleted),
            "swept_leftovers": dg.MetadataValue.json(outcome.swept),
            "plan": dg.MetadataValue.table(
                records=rows,
                schema=dg.TableSchema(columns=[dg.TableColumn(c, "string") for c in ("backup_id", "started_at", "action", "reasons")]),
            ),
        })

    return retention


def backup_job_name(target: str) -> str:
    return f"backup_{target}"


def build_backup_defs(cfg: FleetConfig) -> dg.Definitions:
    assets, checks, jobs, schedules = [], [], [], []
    for target in sorted(cfg.targets):
        assets += [build_backup_asset(cfg, target), build_retention_asset(cfg, target)]
        checks.append(build_integrity_check(target))
        job = dg.define_asset_job(
            backup_job_name(target),
            # Only the integrity check: restore verification runs on its own schedule.
            selection=dg.AssetSelection.assets(backup_asset_key(target), retention_asset_key(target)).without_checks()
            | dg.AssetSelection.checks(dg.AssetCheckKey(backup_asset_key(target), "stored_backup_integrity")),
            description=f"Back up `{target}`, check the stored object, then apply retention.",
            tags={"dbops/target": target, "dbops/server": cfg.server_of(target)},
        )
        jobs.append(job)
        cron, tz = cfg.schedule_for(target)
        schedules.append(dg.ScheduleDefinition(
            name=f"backup_{target}_schedule", job=job, cron_schedule=cron, execution_timezone=tz,
            default_status=dg.DefaultScheduleStatus.RUNNING,
            description=f"Backs up `{target}` at `{cron}` ({tz}).",
        ))
    return dg.Definitions(assets=assets, asset_checks=checks, jobs=jobs, schedules=schedules)
