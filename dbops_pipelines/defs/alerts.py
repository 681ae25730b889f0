"""The alert sensor: one sensor, on by default, that turns failed runs, failed checks and
staleness into alerts for every configured sink.

One sensor rather than a run-failure sensor plus others: de-duplication, reminders and
"resolved" messages need one state for all conditions, kept in the sensor's cursor. It reads
runs and check evaluations as events since its last tick, so a failure followed by a success
between two ticks still alerts (and then resolves). Delivery failures are logged in the tick
(Automation → dbops_alerts in the UI) and kept in the cursor; they never stop other sinks.
"""

from datetime import datetime, timedelta, timezone

import dagster as dg
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from dbops_pipelines.alerts.conditions import (CheckEvaluation, FinishedRun, Freshness, check_observations,
                                               run_observations, staleness_observations, unreadable_observations)
from dbops_pipelines.alerts.dispatch import AlertState, plan_notifications
from dbops_pipelines.alerts.sinks import build_sinks, deliver
from dbops_pipelines.config import FleetConfig, config_path, load_config
from dbops_pipelines.context import FleetContext
from dbops_pipelines.errors import DbopsError
from dbops_pipelines.inventory import last_good
from dbops_pipelines.defs.backups import backup_asset_key, backup_job_name
from dbops_pipelines.defs.verification import CHECK_NAME as VERIFY_CHECK, verify_job_name

CHECK_NAMES = ("stored_backup_integrity", VERIFY_CHECK)
FIRST_LOOK_BACK = timedelta(hours=1)  # on its very first tick, the sensor looks this far back


def _run_error(instance: dg.DagsterInstance, run_id: str) -> str | None:
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        error = record.dagster_event.step_failure_data.error
        if error is not None:
            return error.message
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE):
        return record.message
    return None


def finished_runs(instance: dg.DagsterInstance, cfg: FleetConfig, state: AlertState, now: datetime) -> list[FinishedRun]:
    jobs = {backup_job_name(t): t for t in cfg.targets} | {verify_job_name(t): t for t in cfg.targets}
    since = datetime.fromisoformat(state.marks["runs_after"]) if "runs_after" in state.marks else now - FIRST_LOOK_BACK
    records = instance.get_run_records(
        filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.SUCCESS], updated_after=since),
        order_by="update_timestamp", ascending=True, limit=500)
    out = []
    for rec in records:
        since = max(since, rec.update_timestamp)
        run = rec.dagster_run
        if run.job_name not in jobs:
            continue
        failed = run.status == dg.DagsterRunStatus.FAILURE
        ended = datetime.fromtimestamp(rec.end_time, timezone.utc) if rec.end_time else rec.update_timestamp
        out.append(FinishedRun(run.run_id, run.job_name, run.tags.get("dbops/target", jobs[run.job_name]),
                               not failed, ended, _run_error(instance, run.run_id) if failed else None))
    state.marks["runs_after"] = since.isoformat()
    return out


def check_evaluations(instance: dg.DagsterInstance, cfg: FleetConfig, state: AlertState) -> list[CheckEvaluation]:
    out = []
    for target in cfg.targets:
        for name in CHECK_NAMES:
            key = dg.AssetCheckKey(backup_asset_key(target), name)
            mark = f"check:{target}:{name}"
            history = instance.event_log_storage.get_asset_check_execution_history(key, limit=50)
            done = [r for r in history if r.status != AssetCheckExecutionRecordStatus.PLANNED and r.event is not None]
            seen = state.marks.get(mark)
            # First look at a check: judge only its newest evaluation; later, every new one.
            new = [r for r in done if seen is None or r.id > seen][: 1 if seen is None else None]
            for rec in sorted(new, key=lambda r: r.id):
                ev = rec.event.dagster_event.event_specific_data
                out.append(CheckEvaluation(target, name, ev.passed, ev.severity.value, rec.run_id,
                                           datetime.fromtimestamp(rec.create_timestamp, timezone.utc), ev.description))
            if done:
                state.marks[mark] = max(r.id for r in done)
    return out


def freshness(cfg: FleetConfig, now: datetime) -> tuple[list[Freshness], dict[str, str | None]]:
    """Staleness from the store's catalog (what actually exists), not from Dagster's records:
    backups made with the CLI count, and a partial backup does not reset the RPO clock."""
    out, problems = [], {}
    try:
        ctx = FleetContext(cfg)
    except DbopsError as exc:
        return [], {t: exc.message for t in cfg.targets}
    for target in cfg.targets:
        try:
            good = last_good(ctx, target, now)
        except DbopsError as exc:
            problems[target] = exc.message
            continue
        problems[target] = None
        out.append(Freshness(target, good.last_full_backup_at, timedelta(hours=cfg.rpo_hours_for(target)),
                             good.last_verified_at, timedelta(days=cfg.verification_for(target).max_age_days)))
    return out, problems


def evaluate_alerts(context: dg.SensorEvaluationContext, cfg: FleetConfig, now: datetime | None = None) -> dg.SensorResult:
    now = now or datetime.now(timezone.utc)
    state = AlertState.from_json(context.cursor)
    sinks = build_sinks(cfg.alerts.sinks)
    ui = cfg.alerts.ui_base_url
    fresh, unreadable = freshness(cfg, now)
    observations = (run_observations(finished_runs(context.instance, cfg, state, now), ui)
                    + check_observations(check_evaluations(context.instance, cfg, state), ui)
                    + staleness_observations(fresh, now) + unreadable_observations(unreadable, now))
    notifications = plan_notifications(observations, state, now, timedelta(minutes=cfg.alerts.reminder_minutes))
    results = deliver(notifications, sinks)
    state.record_failures(results, now)
    for n in notifications:
        context.log.info(f"{n.kind}: {n.subject}")
    for r in results:
        if not r.ok:
            context.log.error(f"alert delivery to {r.sink} failed after {r.attempts} attempts: {r.error}")
    if not sinks and state.open:
        context.log.warning(f"{len(state.open)} open alert(s) but no sinks configured (alerts.sinks in dbops.yaml)")
    return dg.SensorResult(cursor=state.to_json())


def build_alert_defs(cfg: FleetConfig, path: str) -> dg.Definitions:
    @dg.sensor(
        name="dbops_alerts",
        minimum_interval_seconds=cfg.alerts.sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Alerts on failed runs, failed checks, backups older than the RPO and verifications older than "
        "their maximum age; de-duplicated, reminded, resolved. Sinks: alerts.sinks in dbops.yaml.",
    )
    def dbops_alerts(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        # Read the config on every tick: the secrets in the environment and the sink list may change.
        return evaluate_alerts(context, load_config(path or config_path()))

    return dg.Definitions(sensors=[dbops_alerts])
