"""Restore verification in Dagster: per target, a `restore_verification` check on the backup
asset, a job that runs only that check, and a weekly schedule.

A check rather than an asset: a verification produces no data of its own; it judges the backup
asset, and its pass/fail history belongs on that asset's page next to the backup it judged.
It is a standalone check so it can run alone (backups don't wait for it) and take launchpad
config. It takes the same per-server pool as backups, so they never overload one server together.
"""

import dagster as dg

from dbops_pipelines.config import FleetConfig
from dbops_pipelines.redact import redact
from dbops_pipelines.defs.backups import backup_asset_key, server_pool
from dbops_pipelines.defs.resources import DbopsFleet
from dbops_pipelines.errors import DbopsError
from dbops_pipelines.verification.report import VerificationReport, report_key
from dbops_pipelines.verification.runner import verify_backup

CHECK_NAME = "restore_verification"


def verification_check_key(target: str) -> dg.AssetCheckKey:
    return dg.AssetCheckKey(backup_asset_key(target), CHECK_NAME)


class VerifyConfig(dg.Config):
    """Launchpad options: leave backup_id empty to verify the newest valid backup."""

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
        "report": dg.MetadataValue.text(location),
    }


def build_verification_check(cfg: FleetConfig, target: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=backup_asset_key(target),
        name=CHECK_NAME,
        pool=server_pool(cfg, target),
        description=f"Restores a backup of `{target}` into a scratch database, compares every table's rows, content "
        "checksums and the schema (incl. RLS policies) with the manifest, runs the sanity queries, measures the RTO, "
        "and always drops the scratch database. The report is kept in the backup store.",
    )
    def restore_verification(context: dg.AssetCheckExecutionContext, config: VerifyConfig, dbops: DbopsFleet) -> dg.AssetCheckResult:
        ctx = dbops.context()
        try:
            report = verify_backup(ctx, target, config.backup_id, run_id=context.run.run_id, log=context.log.info)
        except DbopsError as exc:
            message = redact(exc.message)
            context.log.error(message)
            return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.ERROR,
                                       metadata={"outcome": "not run", "finding": message, "what_to_do": exc.hint or ""})
        (context.log.info if report.passed else context.log.error)(report.summary())
        location = ctx.store.location(report_key(report))
        return dg.AssetCheckResult(
            passed=report.passed,  # the one meaning of "verified"; warnings are in the metadata
            severity=dg.AssetCheckSeverity.WARN if report.passed else dg.AssetCheckSeverity.ERROR,
            metadata=report_metadata(report, location),
            description=report.summary(),
        )

    return restore_verification


def verify_job_name(target: str) -> str:
    return f"verify_{target}"


def build_verification_defs(cfg: FleetConfig) -> dg.Definitions:
    checks, jobs, schedules = [], [], []
    for target in sorted(cfg.targets):
        checks.append(build_verification_check(cfg, target))
        job = dg.define_asset_job(
            verify_job_name(target), selection=dg.AssetSelection.checks(verification_check_key(target)),
            description=f"Restore-verify a backup of `{target}` (the newest valid one unless backup_id is given).",
            tags={"dbops/target": target, "dbops/server": cfg.server_of(target)},
        )
        jobs.append(job)
        settings = cfg.verification_for(target)
        schedules.append(dg.ScheduleDefinition(
            name=f"verify_{target}_schedule", job=job, cron_schedule=settings.schedule,
            execution_timezone=settings.timezone, default_status=dg.DefaultScheduleStatus.RUNNING,
            description=f"Verifies the newest backup of `{target}` at `{settings.schedule}` ({settings.timezone}).",
        ))
    return dg.Definitions(asset_checks=checks, jobs=jobs, schedules=schedules)
