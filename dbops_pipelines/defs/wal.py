"""Base backups, archive health and point-in-time recovery in Dagster (docs/pitr.md#in-dagster).

Per target with a `wal` section:
- a `base_backup` asset: one materialization is one base backup of the target's cluster
  (`pg_basebackup` through the encrypted store, manifest last), on the wal schedule (weekly by
  default); its metadata plots stored and raw bytes, duration and throughput, and records the
  start and stop LSN. It runs in the pool of the target's server, like the logical backups.
- an `archive_health` check on it (a standalone check, so it can run alone): the findings of
  `wal.health.archive_health` (archiving off or not through dbops, archive_command failing, the
  last archived segment too old while WAL is written, a `.ready` backlog, `pg_wal` too large). It
  fails with WARN on a warning and ERROR on a critical finding, and alerts as `check_failed` like
  every check. It runs after each base backup, and every 5 minutes for every such target in one
  run (`wal_archive_health`, in one process: one run per tick whatever the fleet's size), because
  a weekly look would see `pg_wal` fill the disk too late. A server it cannot read fails the check
  (ERROR, "cannot judge"), never the run: a run failure of this feature would stay open until the
  next base backup.
- `base_backup_<target>` (the asset and its check) and its schedule;
- `pitr_<target>`, launchpad only: `dbops pitr` with the same options as op config; the point
  reached and the RTO are the step's output metadata. Its runs do not alert (they carry no
  feature tag): whoever launched a recovery is watching it, and no later run would resolve it.
- the alert condition `base_backup_stale`: no valid base backup in the store within the wal
  schedule's period plus the lesser of that period and a day (8 days for the weekly default).

Targets on one cluster share its base backups and archive: give one target per cluster a `wal`
section, or each of them takes its own base backup of the same server.
"""

import os
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
from pydantic import Field

from dbops_pipelines.alerts.conditions import Staleness, staleness_observations
from dbops_pipelines.config import FleetConfig, WalSettings
from dbops_pipelines.context import FleetContext
from dbops_pipelines.cron import period_minutes
from dbops_pipelines.defs import names
from dbops_pipelines.defs.names import ARCHIVE_HEALTH, BASE_BACKUP
from dbops_pipelines.defs.resources import DbopsFleet
from dbops_pipelines.defs.spec import FeatureSpec, core_call, fail_loudly, fleet_context
from dbops_pipelines.findings import Finding, by_severity, worst
from dbops_pipelines.progress import Progress
from dbops_pipelines.redact import redact
from dbops_pipelines.wal.basebackup import BaseBackupManifest, list_base_backups, take_base_backup
from dbops_pipelines.wal.health import RUNBOOK, judge, read_facts, summary, unarchived_bytes
from dbops_pipelines.wal.naming import parse_lsn
from dbops_pipelines.wal.pitr import parse_target, pitr

MIB = 1 << 20
HEALTH_JOB = "wal_archive_health"
HEALTH_CRON = "*/5 * * * *"          # archive health of every wal target, one run per tick
DEFAULT_MAX_AGE = timedelta(days=8)  # base backups, when the schedule's period cannot be told


def applies(cfg: FleetConfig, target: str) -> bool:
    settings = cfg.target(target).wal
    return settings is not None and settings.enabled


def settings_of(cfg: FleetConfig, target: str) -> WalSettings:
    return cfg.target(target).wal or WalSettings()


def base_backup_max_age(settings: WalSettings) -> timedelta:
    """How old the newest base backup may be: one period of its schedule, plus the lesser of a
    period and a day (one missed weekly run alerts a day later)."""
    minutes = period_minutes(settings.schedule)
    if not minutes:
        return DEFAULT_MAX_AGE
    period = timedelta(minutes=minutes)
    return period + min(period, timedelta(days=1))


# --- metadata ----------------------------------------------------------------------------------

def base_backup_metadata(m: BaseBackupManifest) -> dict:
    seconds = max(m.duration_seconds, 1e-6)
    return {
        "backup_id": m.backup_id,
        "cluster": m.cluster,
        "stored_bytes": dg.MetadataValue.int(m.stored_bytes),
        "raw_bytes": dg.MetadataValue.int(m.raw_bytes),
        "duration_seconds": dg.MetadataValue.float(round(seconds, 3)),
        "throughput_mib_per_s": dg.MetadataValue.float(round(m.raw_bytes / MIB / seconds, 2)),
        "compression_ratio": dg.MetadataValue.float(round(m.raw_bytes / max(m.stored_bytes, 1), 2)),
        "wal_bytes_in_backup": dg.MetadataValue.int(max(parse_lsn(m.stop_lsn) - parse_lsn(m.start_lsn), 0)),
        "start_lsn": m.start_lsn,
        "stop_lsn": m.stop_lsn,
        "timeline": dg.MetadataValue.int(m.timeline),
        "start_time": m.start_time,
        "consistent_from": m.stop_time,
        "files": dg.MetadataValue.int(m.files),
        "location": dg.MetadataValue.text(m.location),
        "sha256": dg.MetadataValue.text(m.sha256),
        "key_id": m.key_id,
        "server_version": m.server_version,
        "system_identifier": m.system_identifier,
        "pg_basebackup_warnings": dg.MetadataValue.int(len(m.pg_basebackup_warnings)),
    }


def _cell(text: str) -> str:
    return redact(text).replace("|", "\\|").replace("\n", " ")


def findings_md(findings: list[Finding]) -> str:
    if not findings:
        return "No findings: archiving is healthy."
    lines = ["| severity | code | object | what | what to do |", "|---|---|---|---|---|"]
    for f in by_severity(findings):
        todo = f.recommendation + (f" `{f.sql}`" if f.sql else "")
        lines.append(f"| {f.severity} | `{f.code}` | {_cell(f.object) or '-'} | {_cell(f.message)} | {_cell(todo)} |")
    return "\n".join(lines + ["", f"Runbook: {RUNBOOK}"])


def health_result(target: str, cfg: FleetConfig, context) -> dg.AssetCheckResult:
    """The check's result for one target. A server that cannot be read is a failed check ("cannot
    judge"), not a failed run: see the module docstring."""
    settings = cfg.target(target).wal
    try:
        with core_call(context):
            facts = read_facts(cfg, target)
    except dg.Failure as exc:
        context.log.error(f"{target}: {exc.description}")
        return dg.AssetCheckResult(
            asset_key=names.asset_key(target, BASE_BACKUP), check_name=ARCHIVE_HEALTH, passed=False,
            severity=dg.AssetCheckSeverity.ERROR,
            description=f"cannot judge the archive's health: {exc.description}",
            metadata={"error": exc.metadata.get("error") or "unknown"})
    findings = judge(target, facts, settings or WalSettings(), required=settings is not None and settings.enabled)
    level = worst([f for f in findings if f.severity != "info"])
    pending = unarchived_bytes(facts)
    numbers = {
        "ready_files": facts.ready_files,
        "pg_wal_bytes": facts.pg_wal_bytes,
        "unarchived_bytes": pending,
        "failed_count": facts.failed_count,
        "archived_count": facts.archived_count,
    }
    metadata = {k: dg.MetadataValue.int(v) for k, v in numbers.items() if v is not None}
    if facts.last_archived_at is not None:
        metadata["last_archived_age_seconds"] = dg.MetadataValue.float(
            round((facts.server_now - facts.last_archived_at).total_seconds(), 1))
    facts_dict = facts.to_dict()
    if facts_dict.get("archive_command"):
        facts_dict["archive_command"] = redact(facts_dict["archive_command"])
    metadata.update({
        "findings": dg.MetadataValue.md(findings_md(findings)),
        "codes": dg.MetadataValue.json(sorted({f.code for f in findings})),
        "facts": dg.MetadataValue.json(facts_dict),
    })
    for f in by_severity(findings):
        if f.severity != "info":
            (context.log.error if f.severity == "critical" else context.log.warning)(f"{target}: {f.code}: {f.message}")
    return dg.AssetCheckResult(
        asset_key=names.asset_key(target, BASE_BACKUP), check_name=ARCHIVE_HEALTH, passed=level is None,
        severity=dg.AssetCheckSeverity.ERROR if level == "critical" else dg.AssetCheckSeverity.WARN,
        description=summary(findings) + ("" if level is None else f" (runbook: {RUNBOOK})"),
        metadata=metadata)


# --- launchpad ---------------------------------------------------------------------------------

class PitrRunConfig(dg.Config):
    """`dbops pitr` from the launchpad: recover the target's cluster into a new data directory on
    this run's host, and start a server there on 127.0.0.1:port. Name exactly one target."""

    into: str = Field(description="A new (or empty) data directory, as an absolute path on the run's host.")
    port: int = Field(description="A free port for the recovered server (it listens on 127.0.0.1 only).")
    to: str | None = Field(None, description="ISO 8601 time; UTC when no zone is given.")
    to_xid: str | None = Field(None, description="A transaction id.")
    to_lsn: str | None = Field(None, description="An LSN, e.g. 0/3000028.")
    to_name: str | None = Field(None, description="A restore point made with pg_create_restore_point().")
    latest: bool = Field(False, description="Everything archived.")
    action: str = Field("promote", description="At the target: promote (open for writes) or pause (read-only).")
    timeout_seconds: float = Field(3600.0, description="How long to wait for recovery to reach the target.")


def pitr_metadata(result) -> dict:
    return {
        "recovered_to": result.target,
        "state": result.state,
        "reached_lsn": result.reached_lsn or "unknown",
        "last_transaction_at": result.last_transaction_at or "unknown",
        "timeline": dg.MetadataValue.int(result.timeline) if result.timeline is not None else "unknown",
        "rto_seconds": dg.MetadataValue.float(result.rto_seconds),
        "restore_seconds": dg.MetadataValue.float(result.restore_seconds),
        "base_backup": result.base_backup,
        "data_dir": dg.MetadataValue.path(result.data_dir),
        "server": f"127.0.0.1:{result.port}",
        "stop_command": dg.MetadataValue.text(result.stop_command),
    }


def build_pitr_job(cfg: FleetConfig, target: str, config_sha256: str) -> dg.JobDefinition:
    @dg.op(name=f"{target}__pitr", description=f"Point-in-time recovery of the cluster of `{target}` (docs/pitr.md).",
           tags={names.TARGET_TAG: target})
    def recover(context: dg.OpExecutionContext, config: PitrRunConfig, dbops: DbopsFleet):
        if not os.path.isabs(config.into):
            raise fail_loudly(f"into must be an absolute path on the run's host, not {config.into!r}; nothing was done",
                              "ConfigError")
        with core_call(context):
            recovery_target = parse_target(config.to, config.to_xid, config.to_lsn, config.to_name, config.latest,
                                           config.action)
        if config.timeout_seconds <= 0:
            raise fail_loudly("timeout_seconds must be positive; nothing was done", "ConfigError")
        ctx = fleet_context(context, dbops)
        context.log.info(f"recovering the cluster of {target} to {recovery_target.describe()} into {config.into}, "
                         f"port {config.port}")
        with core_call(context):
            result = pitr(ctx, target, Path(config.into), config.port, recovery_target, Path(dbops.config_path),
                          log=context.log.info, timeout=config.timeout_seconds)
        context.log.info(
            f"recovered to {result.target} from base backup {result.base_backup}: {result.state} at LSN "
            f"{result.reached_lsn}, last transaction {result.last_transaction_at or 'unknown'}, timeline "
            f"{result.timeline}; RTO {result.rto_seconds:.1f} s. The copy runs on 127.0.0.1:{result.port} from "
            f"{result.data_dir}; stop it with: {result.stop_command}")
        return dg.Output(result.to_dict(), metadata=pitr_metadata(result))

    tags = names.target_tags(cfg, target, "pitr", config_sha256)
    tags.pop(names.FEATURE_TAG)   # not an alerting feature: see the module docstring

    @dg.job(name=names.job_name("pitr", target), tags=tags,
            description=f"Launchpad only: recover the cluster of `{target}` to a point in time into a new data "
                        "directory and start a server on it; never touches the running cluster (docs/pitr.md).")
    def pitr_job():
        recover()

    return pitr_job


# --- definitions -------------------------------------------------------------------------------

def build_health_check(target: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=names.asset_key(target, BASE_BACKUP), name=ARCHIVE_HEALTH,
        description="WAL archiving of the target's server: archive_mode and archive_command through dbops wal-push, "
                    "pg_stat_archiver failures, the age of the last archived segment while WAL is written, .ready "
                    f"files and the size of pg_wal, against the target's wal thresholds. Runbook: {RUNBOOK}.")
    def archive_health(context: dg.AssetCheckExecutionContext, dbops: DbopsFleet) -> dg.AssetCheckResult:
        return health_result(target, dbops.config(), context)

    return archive_health


def build(cfg: FleetConfig, target: str, config_sha256: str) -> dg.Definitions:
    key = names.asset_key(target, BASE_BACKUP)
    settings = settings_of(cfg, target)
    defaults = cfg.defaults.backup
    transient = dg.RetryPolicy(max_retries=defaults.run_retries, delay=defaults.retry_delay_seconds,
                               backoff=dg.Backoff.EXPONENTIAL)

    @dg.asset(
        key=key, group_name=target, kinds={"postgres", names.storage_kind(cfg)}, owners=cfg.defaults.owners,
        tags={names.TARGET_TAG: target, names.FEATURE_TAG: BASE_BACKUP},
        pool=names.server_pool(cfg, target),
        freshness_policy=dg.FreshnessPolicy.time_window(fail_window=base_backup_max_age(settings)),
        description=(f"A base backup of the cluster of `{target}` ({cfg.server_of(target)}): pg_basebackup (tar, WAL "
                     "included) streamed through zstd and AES-256-GCM into the store under wal/<cluster>/base/, the "
                     "manifest written last; the starting point of point-in-time recovery (`pitr_" + target + "`). "
                     "Metadata: stored and raw bytes, duration, start and stop LSN."),
    )
    def base_backup(context: dg.AssetExecutionContext, dbops: DbopsFleet):
        ctx = fleet_context(context, dbops)

        def log_progress(p: Progress) -> None:
            context.log.info(f"{target}: {p.raw_bytes / MIB:.1f} MiB read, {p.stored_bytes / MIB:.1f} MiB stored, "
                             f"{p.rate / MIB:.1f} MiB/s")

        with core_call(context, retry=transient):
            manifest = take_base_backup(ctx, target, progress=log_progress,
                                        on_warning=lambda line: context.log.warning(f"pg_basebackup: {line}"))
        context.log.info(f"base backup {manifest.backup_id} stored at {manifest.location} ({manifest.stored_bytes} "
                         f"bytes), consistent from LSN {manifest.stop_lsn}")
        return dg.MaterializeResult(metadata=base_backup_metadata(manifest))

    job = dg.define_asset_job(
        names.job_name(BASE_BACKUP, target), selection=dg.AssetSelection.assets(key),   # with archive_health
        description=f"Base backup of the cluster of `{target}`, then its archive health.",
        tags=names.target_tags(cfg, target, BASE_BACKUP, config_sha256))
    schedule = dg.ScheduleDefinition(
        name=names.schedule_name(BASE_BACKUP, target), job=job, cron_schedule=settings.schedule,
        execution_timezone=settings.timezone, default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Base backup of `{target}`'s cluster at `{settings.schedule}` ({settings.timezone}).")
    return dg.Definitions(assets=[base_backup], asset_checks=[build_health_check(target)],
                          jobs=[job, build_pitr_job(cfg, target, config_sha256)], schedules=[schedule])


def build_fleet(cfg: FleetConfig, targets: list[str], config_sha256: str) -> dg.Definitions:
    """Archive health of every wal target every 5 minutes, in one run and one process."""
    job = dg.define_asset_job(
        HEALTH_JOB,
        selection=dg.AssetSelection.checks(*(names.check_key(t, BASE_BACKUP, ARCHIVE_HEALTH) for t in targets)),
        executor_def=dg.in_process_executor,
        description=f"Archive health of {len(targets)} target(s): the archive_health check of each, in one process.",
        tags={names.FEATURE_TAG: ARCHIVE_HEALTH, names.CONFIG_TAG: config_sha256})
    schedule = dg.ScheduleDefinition(
        name=f"{HEALTH_JOB}_schedule", job=job, cron_schedule=HEALTH_CRON, execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Checks the WAL archiving of {len(targets)} target(s) at `{HEALTH_CRON}`.")
    return dg.Definitions(jobs=[job], schedules=[schedule])


# --- alert conditions --------------------------------------------------------------------------

def last_base_backup_at(ctx: FleetContext, target: str) -> datetime | None:
    """When the newest valid base backup of the target's cluster finished (the store's catalog)."""
    done = [datetime.fromisoformat(e.manifest.finished_at)
            for e in list_base_backups(ctx, ctx.config.server_of(target)) if e.valid and e.manifest]
    return max(done, default=None)


def conditions(ctx: FleetContext, target: str, now: datetime):
    rule = Staleness(target, "base_backup_stale", "valid base backup", "warning",
                     base_backup_max_age(settings_of(ctx.config, target)))
    return staleness_observations(rule, lambda: last_base_backup_at(ctx, target), now)


SPEC = FeatureSpec(name=BASE_BACKUP, build=build, applies=applies, build_fleet=build_fleet, conditions=conditions,
                   alert_conditions=("base_backup_stale",))
