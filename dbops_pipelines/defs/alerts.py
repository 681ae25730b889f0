"""The alert sensor: one sensor, on by default, that turns failed runs, failed checks and each
feature's silence rules into alerts for every configured sink.

One sensor rather than a run-failure sensor plus others: de-duplication, reminders and
"resolved" messages need one state for all conditions, kept in the sensor's cursor. It knows no
job or check by name: a run belongs to a target by its tags (jobs) or by the asset keys it
selected (runs launched from an asset page), a check evaluation by its asset key, and the
silence rules come from each feature's SPEC. It reads runs and check evaluations as events since
its last tick, so a failure followed by a success between two ticks still alerts (and then
resolves). One sink that is misconfigured or down never stops the others or the tick: delivery
failures are logged in the tick (Automation → dbops_alerts) and kept in the cursor.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import dagster as dg
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from dbops_pipelines.alerts.board import publish_open_alerts
from dbops_pipelines.alerts.conditions import CheckEvaluation, FinishedRun, check_observations, run_observations
from dbops_pipelines.alerts.dispatch import AlertState, Observation, plan_notifications
from dbops_pipelines.alerts.sinks import build_sinks, deliver
from dbops_pipelines.config import FleetConfig
from dbops_pipelines.context import FleetContext
from dbops_pipelines.defs import names
from dbops_pipelines.defs.resources import DbopsFleet
from dbops_pipelines.defs.spec import FeatureSpec
from dbops_pipelines.errors import DbopsError
from dbops_pipelines.redact import redact

FIRST_LOOK_BACK = timedelta(hours=1)  # on its very first tick, the sensor looks this far back
BATCH = 500


@dataclass(frozen=True)
class AlertScope:
    """What the sensor watches, taken from the features' definitions (never from names):
    which feature each asset belongs to, and every check."""

    feature_of: Mapping[dg.AssetKey, str]
    check_keys: tuple[dg.AssetCheckKey, ...]


def alert_scope(defs: dg.Definitions) -> AlertScope:
    feature_of, checks = {}, set()
    for assets_def in defs.assets or []:
        checks |= set(getattr(assets_def, "check_keys", ()))
        for spec in getattr(assets_def, "specs", []):
            if names.FEATURE_TAG in (spec.tags or {}):
                feature_of[spec.key] = spec.tags[names.FEATURE_TAG]
    for checks_def in defs.asset_checks or []:
        checks |= set(checks_def.check_keys)
    return AlertScope(feature_of, tuple(sorted(checks, key=lambda k: k.to_user_string())))


def _run_error(instance: dg.DagsterInstance, run_id: str) -> str | None:
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        data = record.dagster_event.step_failure_data
        # Our failures carry their message and "What to do" as the Failure's description; after the
        # last retry Dagster's own error only says "Exceeded max_retries", with ours as its cause.
        if data.user_failure_data is not None and data.user_failure_data.description:
            return data.user_failure_data.description
        error = data.error
        while error is not None and error.cause is not None and error.message.startswith("Exceeded max_retries"):
            error = error.cause
        if error is not None:
            return error.message
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE):
        return record.message
    return None


def run_subjects(run: dg.DagsterRun, targets, feature_of: Mapping[dg.AssetKey, str]) -> dict[str, str]:
    """target -> feature for one run: from the job's tags, else from the asset keys it selected
    (a run launched with "Materialize" on an asset page carries no job tags)."""
    target, feature = run.tags.get(names.TARGET_TAG), run.tags.get(names.FEATURE_TAG)
    if target in targets and feature:
        return {target: feature}
    keys = set(run.asset_selection or ()) | {k.asset_key for k in (run.asset_check_selection or ())}
    out: dict[str, str] = {}
    for key in sorted(keys, key=lambda k: k.to_user_string()):
        subject = names.subject_of(key, targets)
        if subject:
            # The feature's main asset wins over its secondary ones (backup over backup_retention).
            out[subject[0]] = min(out.get(subject[0], "~"), feature_of.get(key, subject[1]))
    return out


def finished_runs(instance: dg.DagsterInstance, cfg: FleetConfig, state: AlertState, now: datetime,
                  feature_of: Mapping[dg.AssetKey, str]) -> list[FinishedRun]:
    since = datetime.fromisoformat(state.marks["runs_after"]) if "runs_after" in state.marks else now - FIRST_LOOK_BACK
    records = instance.get_run_records(
        filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.SUCCESS], updated_after=since),
        order_by="update_timestamp", ascending=True, limit=BATCH)
    out = []
    for rec in records:
        since = max(since, rec.update_timestamp)
        run = rec.dagster_run
        failed = run.status == dg.DagsterRunStatus.FAILURE
        ended = datetime.fromtimestamp(rec.end_time, timezone.utc) if rec.end_time else rec.update_timestamp
        for target, feature in run_subjects(run, cfg.targets, feature_of).items():
            shown = run.job_name if not run.job_name.startswith("__") else f"{feature} of {target} (from the asset page)"
            out.append(FinishedRun(run.run_id, shown, target, feature, not failed, ended,
                                   _run_error(instance, run.run_id) if failed else None))
    state.marks["runs_after"] = since.isoformat()
    return out


def check_evaluations(instance: dg.DagsterInstance, cfg: FleetConfig, state: AlertState,
                      scope: "AlertScope") -> list[CheckEvaluation]:
    """Every evaluation of one of our checks since the last tick. One query finds the checks that
    ran since (their newest execution is past the mark); only those are read further, so a tick
    costs one query however many targets there are."""
    out = []
    keys = [k for k in scope.check_keys if names.subject_of(k.asset_key, cfg.targets)]
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys) if keys else {}
    for key, newest in sorted(latest.items(), key=lambda kv: kv[0].to_user_string()):
        mark_name = f"check:{key.to_user_string()}"
        seen = state.marks.get(mark_name)
        if seen is not None and newest.id <= seen:
            continue
        history = instance.event_log_storage.get_asset_check_execution_history(key, limit=50)
        done = [r for r in history if r.status != AssetCheckExecutionRecordStatus.PLANNED and r.event is not None]
        # First look at a check: judge only its newest evaluation; later, every new one.
        new = [r for r in done if seen is None or r.id > seen][: 1 if seen is None else None]
        target = key.asset_key.path[0]
        for rec in sorted(new, key=lambda r: r.id):
            ev = rec.event.dagster_event.event_specific_data
            out.append(CheckEvaluation(target, key.name, ev.passed, ev.severity.value, rec.run_id,
                                       datetime.fromtimestamp(rec.create_timestamp, timezone.utc), ev.description))
        if done:
            state.marks[mark_name] = max(r.id for r in done)
    return out


def open_context(context, cfg: FleetConfig) -> FleetContext | None:
    try:
        return FleetContext(cfg)
    except DbopsError as exc:
        context.log.error(f"cannot open the backup store: {redact(exc.message)}")
        return None


def store_conditions(context, ctx: FleetContext | None, specs: Sequence[FeatureSpec], now: datetime) -> list[Observation]:
    """Each feature's silence rules, judged from the store (what actually exists). Without a store
    nothing is observed: open staleness alerts stay open, none is resolved on a guess."""
    out: list[Observation] = []
    if ctx is None:
        return out
    cfg = ctx.config
    for target in sorted(cfg.targets):
        for spec in specs:
            if spec.conditions is None or not spec.applies(cfg, target):
                continue
            try:
                out += spec.conditions(ctx, target, now)
            except Exception as exc:  # noqa: BLE001 - one feature's bug must not silence every other alert
                context.log.error(f"alert conditions of {spec.name} for {target} failed: {redact(str(exc))}")
    return out


def evaluate_alerts(context: dg.SensorEvaluationContext, cfg: FleetConfig, scope: AlertScope,
                    specs: Sequence[FeatureSpec], now: datetime | None = None) -> dg.SensorResult:
    now = now or datetime.now(timezone.utc)
    state = AlertState.from_json(context.cursor)
    sinks = build_sinks(cfg.alerts.sinks)
    ui = cfg.alerts.ui_base_url
    ctx = open_context(context, cfg)
    observations = (run_observations(finished_runs(context.instance, cfg, state, now, scope.feature_of), ui)
                    + check_observations(check_evaluations(context.instance, cfg, state, scope), ui)
                    + store_conditions(context, ctx, specs, now))
    notifications = plan_notifications(observations, state, now, timedelta(minutes=cfg.alerts.reminder_minutes))
    results = deliver(notifications, sinks)
    state.record_failures(results, now)
    for n in notifications:
        context.log.info(f"{n.kind}: {n.subject}")
    for r in results:
        if not r.ok:
            context.log.error(f"alert delivery to {r.sink} failed after {r.attempts} attempts: {r.error}")
    if ctx is not None:
        # The open alerts for `dbops alerts`, for anyone without a sink; its age shows the sensor is alive.
        try:
            publish_open_alerts(ctx.store, state, now, cfg.alerts.sensor_interval_seconds)
        except DbopsError as exc:
            context.log.error(f"cannot publish the open alerts for `dbops alerts`: {redact(exc.message)}")
    if not sinks and state.open:
        context.log.warning(f"{len(state.open)} open alert(s) but no sinks configured (alerts.sinks in dbops.yaml); "
                            "`dbops alerts` lists them")
    return dg.SensorResult(cursor=state.to_json())


def build_alert_defs(cfg: FleetConfig, specs: Sequence[FeatureSpec], feature_defs: dg.Definitions) -> dg.Definitions:
    scope = alert_scope(feature_defs)

    @dg.sensor(
        name=names.ALERT_SENSOR,
        minimum_interval_seconds=cfg.alerts.sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Alerts on failed runs, failed checks, and each feature's silence rules (no valid backup within "
        "the RPO, no passing verification recently); de-duplicated, reminded, resolved. Sinks: alerts.sinks in dbops.yaml.",
    )
    def dbops_alerts(context: dg.SensorEvaluationContext, dbops: DbopsFleet) -> dg.SensorResult:
        # The config snapshot of this code-location load; secrets are read from the environment at delivery.
        return evaluate_alerts(context, dbops.config(), scope, specs)

    return dg.Definitions(sensors=[dbops_alerts])
