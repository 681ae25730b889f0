"""Backups in Dagster. Per target: a backup and its retention as one step (two assets, one
click: "Materialize" on either makes a backup and then applies retention), the integrity check
of the stored object, a job running them, a schedule, and the "no valid full backup within the
RPO" alert condition.

One asset group per target (not one partitioned asset): each database gets its own freshness,
lineage and check history, and its steps run in the concurrency pool of its server, so one
server never runs more backups and verifications at once than the pool allows. Adding a target
to dbops.yaml adds its assets on the next reload of the code location; no code changes.
"""

from datetime import datetime, timedelta

import dagster as dg

from dbops_pipelines import fleet
from dbops_pipelines.alerts.conditions import Staleness, staleness_observations
from dbops_pipelines.backup.catalog import find_backup
from dbops_pipelines.backup.integrity import check_backup
from dbops_pipelines.backup.manifest import BackupManifest
from dbops_pipelines.config import FleetConfig
from dbops_pipelines.context import FleetContext
from dbops_pipelines.defs import names
from dbops_pipelines.defs.names import BACKUP, BACKUP_RETENTION, STORED_BACKUP_INTEGRITY
from dbops_pipelines.defs.resources import DbopsFleet
from dbops_pipelines.defs.spec import FeatureSpec, core_call, fail_loudly, fleet_context
from dbops_pipelines.errors import IntegrityError
from dbops_pipelines.inventory import last_backup_at
from dbops_pipelines.progress import Progress
from dbops_pipelines.redact import redact

MIB = 1 << 20


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


def retention_metadata(outcome: fleet.RetentionOutcome) -> dict:
    # Markdown, not a table value: the reasons are long sentences and the UI's table metadata
    # gives every column the width of its header.
    lines = ["| backup | started | action | why |", "|---|---|---|---|"]
    lines += [f"| `{d.backup_id}` | {d.started_at:%Y-%m-%d %H:%M} | {'keep' if d.keep else '**delete**'} | "
              f"{'; '.join(d.reasons) or '-'} |" for d in outcome.plan.decisions]
    return {
        "deleted": dg.MetadataValue.int(len(outcome.deleted)),
        "kept": dg.MetadataValue.int(len(outcome.plan.to_keep)),
        "deleted_ids": dg.MetadataValue.json(outcome.deleted),
        "swept_leftovers": dg.MetadataValue.json(outcome.swept),
        "plan": dg.MetadataValue.md("\n".join(lines)),
    }


def build_backup_assets(cfg: FleetConfig, target: str) -> dg.AssetsDefinition:
    t = cfg.target(target)
    policy = cfg.retention_for(target)
    backup_key, retention_key = names.asset_key(target, BACKUP), names.asset_key(target, BACKUP_RETENTION)
    tags = {names.TARGET_TAG: target, names.FEATURE_TAG: BACKUP}
    store_kind = names.storage_kind(cfg)
    defaults = cfg.defaults.backup
    # Transient failures of the backup itself (server restarting, store unreachable) are retried
    # with exponential backoff; see core_call for why the policy is not attached to the step.
    transient = dg.RetryPolicy(max_retries=defaults.run_retries, delay=defaults.retry_delay_seconds,
                               backoff=dg.Backoff.EXPONENTIAL)

    @dg.multi_asset(
        name=f"{target}__backup",
        specs=[
            dg.AssetSpec(
                backup_key, group_name=target, kinds={"postgres", store_kind}, owners=cfg.defaults.owners, tags=tags,
                # The UI shows the asset stale past the RPO (by Dagster's materializations); the alert
                # sensor judges the store itself (docs/alerts.md).
                freshness_policy=dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=cfg.rpo_hours_for(target))),
                description=(
                    f"Encrypted pg_dump of `{target}` ({redact(t.dsn)}), kind {t.kind}: pg_dump -Fc streamed through "
                    "zstd and AES-256-GCM into the backup store, the manifest written last. Metadata: size, duration, "
                    "throughput, location, sha256, rows per table."),
            ),
            dg.AssetSpec(
                retention_key, deps=[backup_key], group_name=target, kinds={store_kind}, owners=cfg.defaults.owners,
                tags=tags,
                description=(
                    f"The retention policy of `{target}`, applied right after each backup (keep {policy.keep_daily} "
                    f"daily, {policy.keep_weekly} weekly, {policy.keep_monthly} monthly; nothing younger than "
                    f"{policy.min_age_days} days; never the newest valid or verified backup; stops and deletes "
                    "nothing while any backup's state is unknown). Records what it kept, deleted and why."),
            ),
        ],
        can_subset=False,   # one click backs up and applies retention; retention alone is `dbops retention`
        pool=names.server_pool(cfg, target),
    )
    def backup(context: dg.AssetExecutionContext, config: BackupRunConfig, dbops: DbopsFleet):
        ctx = fleet_context(context, dbops)

        def log_progress(p: Progress) -> None:
            context.log.info(f"{target}: {p.raw_bytes / MIB:.1f} MiB dumped, {p.stored_bytes / MIB:.1f} MiB stored, "
                             f"{p.rate / MIB:.1f} MiB/s")

        with core_call(context, retry=transient):
            manifest = fleet.backup_target(
                ctx, target, config.kind, tuple(config.tables), progress=log_progress,
                on_warning=lambda line: context.log.warning(f"pg_dump: {line}"),
            )
        context.log.info(f"backup {manifest.backup_id} stored at {manifest.location} ({manifest.stored_bytes} bytes)")
        yield dg.MaterializeResult(asset_key=backup_key, metadata=manifest_metadata(manifest))

        with core_call(context):   # never retried: that would make another backup
            outcome = fleet.apply_retention(ctx, target)
        context.log.info(outcome.plan.summary())
        if outcome.blocked:
            # Nothing of this target was deleted; failing the step makes the alert sensor say so.
            raise fail_loudly(
                f"retention of {target} stopped, nothing deleted: " + "; ".join(outcome.blocked[target])
                + "\n\nWhat to do: find out why these backups cannot be read or trusted (`dbops backups list`), fix "
                "or remove them by hand, then run `dbops retention` or the next backup.", "RetentionBlocked")
        yield dg.MaterializeResult(asset_key=retention_key, metadata=retention_metadata(outcome))

    return backup


def build_integrity_check(target: str) -> dg.AssetChecksDefinition:
    backup_key = names.asset_key(target, BACKUP)

    @dg.asset_check(
        asset=backup_key,
        name=STORED_BACKUP_INTEGRITY,
        description="Re-reads the newest stored backup, verifies its sha256, decrypts and authenticates every "
        "record, and lists the archive with pg_restore --list.",
    )
    def integrity(context: dg.AssetCheckExecutionContext, dbops: DbopsFleet) -> dg.AssetCheckResult:
        event = context.instance.get_latest_materialization_event(backup_key)
        if event is None or "backup_id" not in event.asset_materialization.metadata:
            return dg.AssetCheckResult(passed=False, metadata={"finding": "no backup has been recorded yet"})
        backup_id = event.asset_materialization.metadata["backup_id"].value
        ctx = fleet_context(context, dbops)
        # Only evidence about the backup (IntegrityError) fails the check. A missing key, a store
        # outage or a missing pg_restore fail the run instead: an operator's or a machine's
        # problem is never recorded against a backup.
        with core_call(context):
            try:
                entry = find_backup(ctx.store, ctx.read_keys, backup_id)
                report = check_backup(ctx.store, entry.manifest, ctx.read_keys, ctx.config.defaults.pg_bin_dir)
            except IntegrityError as exc:
                return dg.AssetCheckResult(passed=False, metadata={
                    "backup_id": backup_id, "finding": redact(exc.message), "what_to_do": exc.hint or ""})
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


def build(cfg: FleetConfig, target: str, config_sha256: str) -> dg.Definitions:
    assets = build_backup_assets(cfg, target)
    job = dg.define_asset_job(
        names.job_name("backup", target),
        selection=dg.AssetSelection.assets(*assets.keys),   # with the integrity check; verification is its own job
        description=f"Back up `{target}`, apply retention, check the stored object.",
        tags=names.target_tags(cfg, target, BACKUP, config_sha256),
    )
    cron, tz = cfg.schedule_for(target)
    schedule = dg.ScheduleDefinition(
        name=names.schedule_name("backup", target), job=job, cron_schedule=cron, execution_timezone=tz,
        default_status=dg.DefaultScheduleStatus.RUNNING, description=f"Backs up `{target}` at `{cron}` ({tz}).",
    )
    return dg.Definitions(assets=[assets], asset_checks=[build_integrity_check(target)], jobs=[job], schedules=[schedule])


def conditions(ctx: FleetContext, target: str, now: datetime):
    kinds = fleet.kept_kinds(ctx, target)   # full; plus the configured kind of a partial-backup target
    what = "valid full backup" if kinds == ("full",) else f"valid {' or '.join(kinds)} backup"
    rule = Staleness(target, "backup_stale", what, "critical", timedelta(hours=ctx.config.rpo_hours_for(target)))
    return staleness_observations(rule, lambda: last_backup_at(ctx, target, kinds, now), now)


SPEC = FeatureSpec(name=BACKUP, build=build, conditions=conditions, alert_conditions=("backup_stale",))
