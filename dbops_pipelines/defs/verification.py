"""Restore verification in Dagster. Per target: a `restore_verification` asset downstream of the
backup, whose materialization is one verification (its sealed report is kept in the store) and
whose `restored_copy_matches` check says whether the restored copy matched the manifest; a job,
a weekly schedule, and the "no passing verification recently" alert condition.

An asset of its own, not a check on the backup asset: "Materialize" on the backup asset must
make a backup, not also run a whole restore; and the verification's evidence and freshness get
their own node in the lineage. It takes the pool of the server it restores on (the staging server,
else the target's own), so backups and verifications never overload one server together. A verification that cannot run (no key, server down, no
CREATEDB) fails the run with the reason; it is never recorded as a failed backup.
"""

from datetime import datetime, timedelta

import dagster as dg

from dbops_pipelines.alerts.conditions import Staleness, staleness_observations
from dbops_pipelines.config import FleetConfig
from dbops_pipelines.context import FleetContext
from dbops_pipelines.defs import names
from dbops_pipelines.defs.names import BACKUP, RESTORE_VERIFICATION, RESTORED_COPY_MATCHES
from dbops_pipelines.defs.resources import DbopsFleet
from dbops_pipelines.defs.spec import FeatureSpec, core_call, fleet_context
from dbops_pipelines.inventory import last_verified_at
from dbops_pipelines.verification.report import VerificationReport, report_key
from dbops_pipelines.verification.runner import verify_backup


class VerifyConfig(dg.Config):
    """Launchpad options: leave backup_id empty to verify the newest full backup."""

    backup_id: str | None = None


def report_metadata(report: VerificationReport, location: str) -> dict:
    return {
        "backup_id": report.backup_id,
        "outcome": report.outcome,
        "rto_seconds": dg.MetadataValue.float(report.rto_seconds if report.rto_seconds is not None else float("nan")),
        "rto_objective_seconds": dg.MetadataValue.int(report.rto_objective_seconds),
        "tables": dg.MetadataValue.table(
            records=[dg.TableRecord({"table": t.table, "expected_rows": t.expected_rows,
                                     "actual_rows": t.actual_rows if t.actual_rows is not None else -1,
                                     "checksum": t.checksum, "ok": t.ok}) for t in report.tables],
            schema=dg.TableSchema(columns=[dg.TableColumn("table", "string"), dg.TableColumn("expected_rows", "int"),
                                           dg.TableColumn("actual_rows", "int"), dg.TableColumn("checksum", "string"),
                                           dg.TableColumn("ok", "bool")]),
        ),
        "findings": dg.MetadataValue.md("\n".join(f"- **{f.severity}** {f.kind}: {f.message}" for f in report.findings) or "none"),
        "sanity_checks": dg.MetadataValue.json(report.sanity),
        "scratch_database": f"{report.scratch_database} on {report.server} (dropped)",
        # staging | same_server (production carried the restore; see docs/verification.md) | same_server_on_purpose
        "restored_on": report.server_role or "unknown",
        **({"server_notice": dg.MetadataValue.md(f"**WARNING** {report.server_notice}")} if report.server_notice else {}),
        "report": dg.MetadataValue.text(location),
    }


def build_verification_asset(cfg: FleetConfig, target: str) -> dg.AssetsDefinition:
    key = names.asset_key(target, RESTORE_VERIFICATION)
    settings = cfg.verification_for(target)

    @dg.asset(
        key=key,
        deps=[names.asset_key(target, BACKUP)],
        group_name=target,
        kinds={"postgres", names.storage_kind(cfg)},
        owners=cfg.defaults.owners,
        tags={names.TARGET_TAG: target, names.FEATURE_TAG: RESTORE_VERIFICATION},
        pool=names.verification_pool(cfg, target),
        freshness_policy=dg.FreshnessPolicy.time_window(fail_window=timedelta(days=settings.max_age_days)),
        check_specs=[dg.AssetCheckSpec(
            RESTORED_COPY_MATCHES, asset=key,
            description="The restored copy matched the manifest: rows, content checksums, schema, sanity queries.")],
        description=f"Restores a backup of `{target}` into a scratch database, compares every table's rows, content "
        "checksums and the schema (incl. RLS policies) with the manifest, runs the sanity queries, measures the RTO, "
        "and always drops the scratch database. The sealed report is kept in the backup store.",
    )
    def restore_verification(context: dg.AssetExecutionContext, config: VerifyConfig, dbops: DbopsFleet):
        ctx = fleet_context(context, dbops)

        def log(line: str) -> None:
            (context.log.warning if line.startswith("WARNING") else context.log.info)(line)

        with core_call(context):
            report = verify_backup(ctx, target, config.backup_id, run_id=context.run.run_id, log=log)
        (context.log.info if report.passed else context.log.error)(report.summary())
        metadata = report_metadata(report, ctx.store.location(report_key(report)))
        yield dg.MaterializeResult(metadata=metadata)
        yield dg.AssetCheckResult(
            check_name=RESTORED_COPY_MATCHES,
            passed=report.passed,  # the one meaning of "verified"; warnings are in the metadata
            severity=dg.AssetCheckSeverity.WARN if report.passed else dg.AssetCheckSeverity.ERROR,
            metadata={"backup_id": report.backup_id, "outcome": report.outcome, "findings": metadata["findings"]},
            description=report.summary(),
        )

    return restore_verification


def build(cfg: FleetConfig, target: str, config_sha256: str) -> dg.Definitions:
    asset = build_verification_asset(cfg, target)
    job = dg.define_asset_job(
        names.job_name("verify", target), selection=dg.AssetSelection.assets(asset.key),
        description=f"Restore-verify a backup of `{target}` (the newest full one unless backup_id is given).",
        tags=names.target_tags(cfg, target, RESTORE_VERIFICATION, config_sha256),
    )
    settings = cfg.verification_for(target)
    schedule = dg.ScheduleDefinition(
        name=names.schedule_name("verify", target), job=job, cron_schedule=settings.schedule,
        execution_timezone=settings.timezone, default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Verifies the newest backup of `{target}` at `{settings.schedule}` ({settings.timezone}).",
    )
    return dg.Definitions(assets=[asset], jobs=[job], schedules=[schedule])


def conditions(ctx: FleetContext, target: str, now: datetime):
    rule = Staleness(target, "verification_stale", "passing restore verification", "warning",
                     timedelta(days=ctx.config.verification_for(target).max_age_days))
    return staleness_observations(rule, lambda: last_verified_at(ctx, target), now)


SPEC = FeatureSpec(name=RESTORE_VERIFICATION, build=build, conditions=conditions,
                   alert_conditions=("verification_stale",))
