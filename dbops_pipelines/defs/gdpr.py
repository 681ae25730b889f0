"""GDPR cleanup in Dagster. Per target with a `gdpr` section: a `gdpr_cleanup` asset whose
materialization is one cleanup (rows deleted and anonymized per table, plotted), launched by its
schedule (03:00 by default) or by hand, where the launchpad's `dry_run: true` counts what would go
and changes nothing; and a check that no row soft-deleted longer ago than the grace period plus a
day is left: if it fails, cleanup is not keeping up (or not running), and the alert sensor says so.
"""

import dagster as dg

from dbops_pipelines.config import FleetConfig
from dbops_pipelines.defs import names
from dbops_pipelines.defs.names import GDPR_CLEANUP, NO_OVERDUE_ROWS
from dbops_pipelines.defs.resources import DbopsFleet
from dbops_pipelines.defs.spec import FeatureSpec, core_call
from dbops_pipelines.gdpr.plan import CleanupPlan
from dbops_pipelines.gdpr.service import cleanup_target, overdue_rows


class CleanupRunConfig(dg.Config):
    """Launchpad options: dry_run counts what would go, per table, and changes nothing."""

    dry_run: bool = False


def applies(cfg: FleetConfig, target: str) -> bool:
    settings = cfg.target(target).gdpr
    return settings is not None and settings.enabled


def _actor(context) -> str:
    """Who started the run, for the audit trail: the schedule, a sensor, or someone in the UI."""
    tags = context.run.tags
    if tags.get("dagster/schedule_name"):
        return f"dagster schedule {tags['dagster/schedule_name']}"
    if tags.get("dagster/sensor_name"):
        return f"dagster sensor {tags['dagster/sensor_name']}"
    return f"dagster run {context.run.run_id} ({tags.get('user', 'launched by hand')})"


def _plan_md(plan: CleanupPlan) -> str:
    lines = ["| table | would be | rows | sample keys | why |", "|---|---|---|---|---|"]
    lines += [f"| {t.table} | {t.action} | {t.rows} | {', '.join(map(str, t.sample_keys)) or '-'} | {t.why} |"
              for t in plan.tables]
    lines += [f"\nskipped {table}: {why}" for table, why in sorted(plan.skipped.items())]
    return "\n".join(lines)


def build(cfg: FleetConfig, target: str, config_sha256: str) -> dg.Definitions:
    key = names.asset_key(target, GDPR_CLEANUP)
    settings = cfg.target(target).gdpr

    @dg.asset(
        key=key, group_name=target, kinds={"postgres"}, owners=cfg.defaults.owners,
        tags={names.TARGET_TAG: target, names.FEATURE_TAG: GDPR_CLEANUP},
        pool=names.server_pool(cfg, target),
        output_required=False,    # a dry run observes; only a real cleanup materializes
        check_specs=[dg.AssetCheckSpec(NO_OVERDUE_ROWS, asset=key, description=(
            "No row soft-deleted longer ago than the grace period plus a day is left in a soft-deletable table."))],
        description=(f"GDPR cleanup of `{target}`: rows of `{settings.subject_table}` (and other soft-deletable tables) "
                     f"soft-deleted more than {settings.grace_days} days ago are deleted with what belongs to them, or "
                     "anonymized where configured, in short batches that skip rows others hold. Launch with "
                     "`dry_run: true` to see the plan without changing anything (docs/gdpr.md)."),
    )
    def gdpr_cleanup(context: dg.AssetExecutionContext, config: CleanupRunConfig, dbops: DbopsFleet):
        cfg_now = dbops.config()
        with core_call(context):
            outcome = cleanup_target(dbops.context(), target, dry=config.dry_run, log=context.log.info,
                                     run_id=context.run.run_id, actor=_actor(context))
        if isinstance(outcome, CleanupPlan):
            context.log.info(f"dry run: {outcome.total('delete')} rows would be deleted, "
                             f"{outcome.total('anonymize')} anonymized; nothing was changed")
            # An observation, not a materialization: a dry run must not make the asset look cleaned.
            yield dg.AssetObservation(asset_key=key, metadata={
                "dry_run": True, "cutoff": outcome.cutoff.isoformat(),
                "would_delete": dg.MetadataValue.int(outcome.total("delete")),
                "would_anonymize": dg.MetadataValue.int(outcome.total("anonymize")),
                "plan": dg.MetadataValue.md(_plan_md(outcome)),
                "foreign_keys_without_index": dg.MetadataValue.json(outcome.unindexed)})
        else:
            deleted = sum(n for (_, action), n in outcome.removed.items() if action == "delete")
            anonymized = sum(n for (_, action), n in outcome.removed.items() if action == "anonymize")
            for table, rows in sorted(outcome.still_locked.items()):
                context.log.warning(f"{table}: {rows} eligible rows were held by other sessions; left for the next run")
            for table, entries in sorted(outcome.blocked.items()):
                context.log.warning(f"{table}: {len(entries)} people could not be removed, e.g. {entries[0]['why']}")
            for table, why in sorted(outcome.skipped.items()):
                context.log.warning(f"{table} was not cleaned: {why}")
            yield dg.MaterializeResult(metadata={
                "dry_run": False, "cutoff": outcome.cutoff.isoformat(),
                "rows_deleted": dg.MetadataValue.int(deleted), "rows_anonymized": dg.MetadataValue.int(anonymized),
                "batches": dg.MetadataValue.int(outcome.batches),
                "still_held_by_others": dg.MetadataValue.int(sum(outcome.still_locked.values())),
                "blocked": dg.MetadataValue.json(outcome.blocked), "skipped_tables": dg.MetadataValue.json(outcome.skipped),
                "per_table": dg.MetadataValue.json(outcome.to_dict()["tables"])})
        with core_call(context):
            overdue = overdue_rows(cfg_now, target)
        left = {t: n for t, n in overdue.items() if n}
        yield dg.AssetCheckResult(
            check_name=NO_OVERDUE_ROWS, passed=not left,
            metadata={"overdue_rows": dg.MetadataValue.json(left)},
            description="none left" if not left else
            f"{sum(left.values())} rows are past the grace period plus a day: is cleanup running and finishing? "
            "Look at the last gdpr_cleanup runs, rows held by long transactions, and docs/gdpr.md.")

    job = dg.define_asset_job(
        names.job_name("gdpr_cleanup", target), selection=dg.AssetSelection.assets(key),
        description=f"GDPR cleanup of `{target}` (launchpad: dry_run: true to only count).",
        tags=names.target_tags(cfg, target, GDPR_CLEANUP, config_sha256))
    schedule = dg.ScheduleDefinition(
        name=names.schedule_name("gdpr_cleanup", target), job=job, cron_schedule=settings.schedule,
        execution_timezone=settings.timezone, default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"GDPR cleanup of `{target}` at `{settings.schedule}` ({settings.timezone}).")
    return dg.Definitions(assets=[gdpr_cleanup], jobs=[job], schedules=[schedule])


SPEC = FeatureSpec(name=GDPR_CLEANUP, build=build, applies=applies)
