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
from dagster._core.event_api import RunStatusChangeRecordsFilter
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
DELIVERY_BUDGET_SECONDS = 30


@dataclass(frozen=True)
class AlertScope:
    """What the sensor watches, taken from the features' definitions (never from names): which
    feature each asset belongs to, which targets and features each step works for, every check
    whose evaluations alert (a feature whose findings alert one by one through its conditions
    marks its checks with ``names.ALERTS_PER_FINDING`` so a finding does not alert twice)."""

    feature_of: Mapping[dg.AssetKey, str]
    step_subjects: Mapping[str, frozenset[tuple[str, str]]]    # step key (op name) -> {(target, feature)}
    check_keys: tuple[dg.AssetCheckKey, ...]
    features: frozenset[str] = frozenset()

    def step_assets(self, step: str) -> set[dg.AssetKey]:
        subjects = self.step_subjects.get(step, frozenset())
        return {k for k, f in self.feature_of.items() if (k.path[0], f) in subjects}


def _alerting_checks(assets_def) -> set[dg.AssetCheckKey]:
    specs = getattr(assets_def, "check_specs", ())
    return {s.key for s in specs if (s.metadata or {}).get(names.ALERTS_PER_FINDING) is None}


def alert_scope(defs: dg.Definitions) -> AlertScope:
    feature_of, steps, checks = {}, {}, set()
    for assets_def in defs.assets or []:
        checks |= _alerting_checks(assets_def)
        for spec in getattr(assets_def, "specs", []):
            if names.FEATURE_TAG in (spec.tags or {}):
                feature_of[spec.key] = spec.tags[names.FEATURE_TAG]
                steps.setdefault(assets_def.node_def.name, set()).add((spec.key.path[0], spec.tags[names.FEATURE_TAG]))
    for checks_def in defs.asset_checks or []:
        checks |= _alerting_checks(checks_def)
        for key in checks_def.check_keys:
            if key.asset_key in feature_of:
                steps.setdefault(checks_def.node_def.name, set()).add((key.asset_key.path[0], feature_of[key.asset_key]))
    return AlertScope(feature_of, {k: frozenset(v) for k, v in steps.items()},
                      tuple(sorted(checks, key=lambda k: k.to_user_string())), frozenset(feature_of.values()))


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


def _materialized(instance: dg.DagsterInstance, run_id: str) -> set[dg.AssetKey]:
    """The assets a run really made (a materialization tagged incomplete recorded a partial result)."""
    return {r.dagster_event.asset_key for r in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
            if names.INCOMPLETE_TAG not in (r.dagster_event.event_specific_data.materialization.tags or {})}


def run_subjects(instance: dg.DagsterInstance, run: dg.DagsterRun, failed: bool, targets,
                 scope: "AlertScope") -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(target, feature) pairs a finished run speaks for: (those it failed, those it did). A job
    of one target says so in its tags. Otherwise (a run from an asset page, a fleet job working
    for many targets in one step) the steps and materializations tell: a failed step fails the
    subjects it did not materialize, so one unreachable database in a fleet-wide stats run alerts
    for that database alone, and the others' earlier failures resolve; a "Materialize all" whose
    verification failed alerts for the verification; a check-only run resolves nothing it did not do."""
    target, feature = run.tags.get(names.TARGET_TAG), run.tags.get(names.FEATURE_TAG)
    if target in targets and feature:
        return ({(target, feature)}, set()) if failed else (set(), {(target, feature)})
    selected = set(run.asset_selection or ()) | {k.asset_key for k in (run.asset_check_selection or ())}
    if not any(names.subject_of(k, targets) for k in selected) and feature not in scope.features:
        return set(), set()   # not ours (another team's job): its logs are not even read
    done = {(k.path[0], scope.feature_of[k]) for k in _materialized(instance, run.run_id)
            if k in scope.feature_of and names.subject_of(k, targets)}
    if not failed:
        return set(), done
    steps = {r.dagster_event.step_key for r in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)}
    in_scope = {s for s in steps if s in scope.step_subjects}
    if in_scope:
        failing = set()
        for step in in_scope:
            subjects = scope.step_subjects[step]
            if len(subjects) > 1:   # a step for many targets: those it did not materialize (and were selected);
                # when it materialized all of them and failed anyway (e.g. history not kept), it failed for all
                subjects = (subjects - done) or subjects
                if selected:
                    subjects &= {(k.path[0], scope.feature_of[k]) for k in selected if k in scope.feature_of}
            failing |= subjects
        return {f for f in failing if f[0] in targets}, done - failing
    # The run failed before any step (e.g. at launch): it speaks for everything it selected.
    return {(k.path[0], scope.feature_of[k]) for k in selected if k in scope.feature_of and names.subject_of(k, targets)}, set()


def finished_runs(instance: dg.DagsterInstance, cfg: FleetConfig, state: AlertState, now: datetime,
                  scope: "AlertScope") -> list[FinishedRun]:
    """Runs that succeeded or failed since the last tick, read as run-status events by their
    storage cursor (never by the run's update time, which a tag change moves). Canceled runs
    are an operator's decision, not an alert."""
    out = []
    for event_type, succeeded in ((dg.DagsterEventType.RUN_FAILURE, False), (dg.DagsterEventType.RUN_SUCCESS, True)):
        mark_name = f"runs:{event_type.value}"
        after = state.marks.get(mark_name)
        if not isinstance(after, int):   # first look (or a mark of an earlier release)
            newest = instance.fetch_run_status_changes(RunStatusChangeRecordsFilter(event_type), limit=1).records
            if not newest:
                after = 0                    # none ever: every one from now on is new
            else:
                # Look back a little, and start after the newest event seen even if that window was
                # empty: never replay the instance's whole history as new alerts.
                records = instance.fetch_run_status_changes(
                    RunStatusChangeRecordsFilter(event_type, after_timestamp=(now - FIRST_LOOK_BACK).timestamp()),
                    limit=BATCH, ascending=True).records
                after = min([r.storage_id for r in records], default=newest[0].storage_id + 1) - 1
        records = instance.fetch_run_status_changes(RunStatusChangeRecordsFilter(event_type, after_storage_id=after),
                                                    limit=BATCH, ascending=True).records
        for rec in records:
            after = max(after, rec.storage_id)
            run = instance.get_run_by_id(rec.run_id)
            if run is None:
                continue
            ended = datetime.fromtimestamp(rec.timestamp, timezone.utc)
            failing, done = run_subjects(instance, run, not succeeded, cfg.targets, scope)
            error = _run_error(instance, run.run_id) if failing else None
            for target, feature in sorted(failing | done):
                shown = run.job_name if not run.job_name.startswith("__") else f"{feature} of {target} (from the asset page)"
                ok = (target, feature) not in failing
                out.append(FinishedRun(run.run_id, shown, target, feature, ok, ended, None if ok else error))
        state.marks[mark_name] = after
    return out


def _run_finished(instance: dg.DagsterInstance, run_id: str) -> bool:
    run = instance.get_run_by_id(run_id)
    return run is None or run.is_finished


def check_evaluations(instance: dg.DagsterInstance, cfg: FleetConfig, state: AlertState,
                      scope: "AlertScope") -> list[CheckEvaluation]:
    """Every evaluation of one of our checks since the last tick. One query finds the checks with
    anything new (their newest execution is past the mark); only those are read further, so a
    tick costs one query however many targets there are.

    An execution's id is given when the check is *planned* (at run creation), not when it ends,
    so the mark never passes an execution still in flight: it stays just below the oldest one,
    and the ids above it already reported are remembered until the mark passes them."""
    out = []
    keys = [k for k in scope.check_keys if names.subject_of(k.asset_key, cfg.targets)]
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys) if keys else {}
    for key, newest in sorted(latest.items(), key=lambda kv: kv[0].to_user_string()):
        mark_name = f"check:{key.to_user_string()}"
        mark = state.marks.get(mark_name)
        if isinstance(mark, int):   # the shape of earlier releases: a plain id
            mark = {"below": mark, "seen": []}
        if mark is not None and newest.id <= mark["below"]:
            continue
        history = instance.event_log_storage.get_asset_check_execution_history(key, limit=50)
        done = [r for r in history if r.status != AssetCheckExecutionRecordStatus.PLANNED and r.event is not None]
        # A planned execution whose run has ended (its step failed or was skipped) never completes:
        # only those of runs still going hold the mark back.
        in_flight = [r.id for r in history if r.status == AssetCheckExecutionRecordStatus.PLANNED
                     and not _run_finished(instance, r.run_id)]
        if mark is None:   # first look at a check: judge only its newest evaluation
            new = sorted(done, key=lambda r: r.id)[-1:]
            seen: set[int] = set()
        else:
            seen = set(mark["seen"])
            new = sorted((r for r in done if r.id > mark["below"] and r.id not in seen), key=lambda r: r.id)
        target = key.asset_key.path[0]
        for rec in new:
            ev = rec.event.dagster_event.event_specific_data
            out.append(CheckEvaluation(target, key.name, ev.passed, ev.severity.value, rec.run_id,
                                       datetime.fromtimestamp(rec.event.timestamp, timezone.utc), ev.description))
        reported = seen | {r.id for r in new} | ({r.id for r in done} if mark is None else set())
        below = (min(in_flight) - 1) if in_flight else max([r.id for r in done] + [mark["below"] if mark else 0])
        state.marks[mark_name] = {"below": below, "seen": sorted(i for i in reported if i > below)}
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
    for spec in specs:
        if spec.fleet_conditions is None or not spec.targets(cfg):
            continue
        try:
            out += spec.fleet_conditions(ctx, spec.targets(cfg), now)
        except Exception as exc:  # noqa: BLE001 - one feature's bug must not silence every other alert
            context.log.error(f"alert conditions of {spec.name} failed: {redact(str(exc))}")
    for target in sorted(cfg.targets):
        for spec in specs:
            if spec.conditions is None or not spec.applies(cfg, target):
                continue
            try:
                out += spec.conditions(ctx, target, now)
            except Exception as exc:  # noqa: BLE001 - one feature's bug must not silence every other alert
                context.log.error(f"alert conditions of {spec.name} for {target} failed: {redact(str(exc))}")
    return out


def obsolete_observations(state: AlertState, cfg: FleetConfig, scope: AlertScope,
                          specs: Sequence[FeatureSpec] = ()) -> list[Observation]:
    """Open alerts nothing can ever clear any more: of a target removed from dbops.yaml, of a
    feature, check or condition that no longer applies to the target (stats turned off, its
    `metrics:` section removed), or in a key shape of an earlier release (run alerts were keyed by
    job, the unreadable store by target alone). They are resolved once, so no reminder repeats for
    ever and no incident stays open in PagerDuty."""
    subjects = {(k.path[0], f) for k, f in scope.feature_of.items()}
    checks = {(k.asset_key.path[0], k.name) for k in scope.check_keys}
    owner = {condition: spec for spec in specs for condition in spec.alert_conditions}
    out = []
    for key in sorted(state.open):
        target, _, rest = key.partition("/")
        condition, _, what = rest.partition("/")
        judged = what if condition == "store_unreadable" else condition
        spec = owner.get(judged)
        if (target not in cfg.targets
                or (condition == "run_failed" and (target, what) not in subjects)
                or (condition == "check_failed" and (target, what) not in checks)
                or (condition == "store_unreadable" and not what)
                or (spec is not None and not spec.applies(cfg, target))):
            out.append(Observation(key, False))
    return out


def evaluate_alerts(context: dg.SensorEvaluationContext, cfg: FleetConfig, scope: AlertScope,
                    specs: Sequence[FeatureSpec], now: datetime | None = None) -> dg.SensorResult:
    now = now or datetime.now(timezone.utc)
    state = AlertState.from_json(context.cursor)
    sinks = build_sinks(cfg.alerts.sinks)
    ui = cfg.alerts.ui_base_url
    ctx = open_context(context, cfg)
    observations = (run_observations(finished_runs(context.instance, cfg, state, now, scope), ui)
                    + check_observations(check_evaluations(context.instance, cfg, state, scope), ui)
                    + store_conditions(context, ctx, specs, now)
                    + obsolete_observations(state, cfg, scope, specs))
    notifications = plan_notifications(observations, state, now, timedelta(minutes=cfg.alerts.reminder_minutes))
    retries = state.take_pending()
    # Within Dagster's 60 s sensor timeout, whatever the sinks do; what is late is retried next tick.
    results = deliver(notifications, sinks, budget_seconds=DELIVERY_BUDGET_SECONDS, retries=retries)
    state.record_failures(results, now, notifications + [n for n, _ in retries])
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
