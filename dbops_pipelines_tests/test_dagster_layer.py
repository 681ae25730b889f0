"""The Dagster layer's shape: a feature plugs in by its SPEC alone (its failures and silence rules
alert without touching the sensor), runs launched from an asset page alert like scheduled ones,
dbops.yaml is read once per code-location load, and clusters' pool limits reach the instance."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import dagster as dg

from dbops_pipelines.alerts.conditions import Staleness, staleness_observations
from dbops_pipelines.config import load_config
from dbops_pipelines.defs import names
from dbops_pipelines.defs.alerts import alert_scope, evaluate_alerts
from dbops_pipelines.defs.pools import apply_pool_limits
from dbops_pipelines.defs.spec import FeatureSpec, discover_features
from dbops_pipelines.definitions import build_definitions

UNREACHABLE = "postgresql://dbops@127.0.0.1:1/app"


def canary_feature() -> FeatureSpec:
    """A feature the sensor has never heard of: an asset whose check fails, a job whose run
    fails, and a silence rule that never had what it waits for."""

    def build(cfg, target, sha256):
        key = names.asset_key(target, "canary")

        @dg.asset(key=key, group_name=target, tags={names.TARGET_TAG: target, names.FEATURE_TAG: "canary"},
                  check_specs=[dg.AssetCheckSpec("canary_sings", asset=key)])
        def canary():
            yield dg.MaterializeResult()
            yield dg.AssetCheckResult(check_name="canary_sings", passed=False, description="the canary is silent")

        @dg.asset(key=names.asset_key(target, "broken_canary"), group_name=target,
                  tags={names.TARGET_TAG: target, names.FEATURE_TAG: "canary"})
        def broken_canary():
            raise dg.Failure(description="the canary fell off its perch")

        job = dg.define_asset_job(f"canary_{target}", selection=[key],
                                  tags=names.target_tags(cfg, target, "canary", sha256))
        return dg.Definitions(assets=[canary, broken_canary], jobs=[job])

    def conditions(ctx, target, now):
        return staleness_observations(Staleness(target, "backup_stale", "canary song", "warning", timedelta(hours=1)),
                                      lambda: None, now)

    return FeatureSpec(name="canary", build=build, conditions=conditions)


def tick(defs, specs, instance, path, cursor=None, now=None) -> str:
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor)
    return evaluate_alerts(ctx, load_config(path), alert_scope(defs), specs, now=now).cursor


def test_a_new_feature_alerts_without_editing_the_sensor(write_config, http_receiver, sample_app):
    path = write_config({"app": sample_app["dsn"]}, alerts={"sinks": [
        {"kind": "webhook", "url": http_receiver.url("/hook"), "min_severity": "info"}]})
    specs = [canary_feature()]
    defs = build_definitions(path, specs=specs)
    with dg.instance_for_test() as instance:
        assert defs.resolve_job_def("canary_app").execute_in_process(instance=instance).success
        # Launched like the UI's "Materialize" on the asset page: the implicit job, no job tags.
        implicit = defs.get_repository_def().get_implicit_job_def_for_assets([names.asset_key("app", "broken_canary")])
        failed = implicit.execute_in_process(instance=instance, asset_selection=[names.asset_key("app", "broken_canary")],
                                             raise_on_error=False)
        assert not failed.success
        tick(defs, specs, instance, path)
    fired = {r.body["alert"]["key"]: r.body["alert"] for r in http_receiver.received("/hook")}
    assert fired["app/check_failed/canary_sings"]["error_excerpt"] == "the canary is silent"
    run_alert = fired["app/run_failed/canary"]
    assert run_alert["run_id"] == failed.run_id and "fell off its perch" in run_alert["error_excerpt"]
    assert run_alert["title"] == "run of canary of app (from the asset page) failed"
    assert "no canary song" in fired["app/backup_stale"]["title"]


def test_features_are_found_by_their_spec():
    assert {s.name for s in discover_features()} >= {names.BACKUP, names.RESTORE_VERIFICATION}


def test_dbops_yaml_is_read_once_per_code_location_load(write_config, sample_app, tmp_path):
    path = write_config({"app": sample_app["dsn"]})
    defs = build_definitions(path)
    job = defs.resolve_job_def("backup_app")
    launched_with = job.tags[names.CONFIG_TAG]
    resource = defs.resources["dbops"]
    assert resource.snapshot_sha256() == launched_with
    # Editing the file after the load changes nothing for this load's assets and sensor...
    path.write_text(path.read_text().replace("app:", "renamed:"))
    assert set(resource.config().targets) == {"app"}
    # ... until the code location is loaded again, which also tells runs from the old load apart.
    reloaded = build_definitions(path)
    assert reloaded.resources["dbops"].snapshot_sha256() != launched_with
    assert set(reloaded.resources["dbops"].config().targets) == {"renamed"}


def test_a_run_launched_from_an_older_config_says_so(write_config, sample_app):
    path = write_config({"app": sample_app["dsn"]})
    defs = build_definitions(path)
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("backup_app").execute_in_process(
            instance=instance, tags={names.CONFIG_TAG: "0" * 64})
        assert result.success
        logs = [r.user_message for r in instance.all_logs(result.run_id)]
    assert any("dbops.yaml changed between the launch of this run and its start" in m for m in logs)


def test_cluster_pool_limits_reach_the_instance(write_config, sample_app):
    path = write_config({"app": {"dsn": sample_app["dsn"], "cluster": "main"}},
                        clusters={"main": {"pool_limit": 3}, "idle": {}})
    defs = build_definitions(path)
    pool = defs.resolve_assets_def(names.asset_key("app", names.BACKUP)).op.pool
    assert pool == "pg_server_main"
    with dg.instance_for_test() as instance:
        assert apply_pool_limits(instance, load_config(path)) == ["pg_server_main: default -> 3"]
        assert instance.event_log_storage.get_concurrency_info(pool).slot_count == 3
        assert apply_pool_limits(instance, load_config(path)) == []   # already right: nothing written
        sensor = defs.resolve_sensor_def(names.POOL_SENSOR)
        assert sensor.default_status == dg.DefaultSensorStatus.RUNNING


def test_store_conditions_never_resolve_on_a_store_that_cannot_be_opened(write_config, http_receiver, monkeypatch):
    """A target never backed up fires backup_stale; when the key disappears from the environment
    the store cannot be judged: store_unreadable fires and backup_stale stays open."""
    path = write_config({"app": UNREACHABLE}, alerts={"sinks": [
        {"kind": "webhook", "url": http_receiver.url("/hook"), "min_severity": "info"}]})
    defs = build_definitions(path)
    specs = discover_features()
    with dg.instance_for_test() as instance:
        cursor = tick(defs, specs, instance, path)
        assert "app/backup_stale" in json.loads(cursor)["open"]
        monkeypatch.delenv("DBOPS_TEST_BACKUP_KEY")
        later = datetime.now(timezone.utc) + timedelta(minutes=1)
        cursor = tick(defs, specs, instance, path, cursor, now=later)
    events = [(r.body["event"], r.body["alert"]["key"]) for r in http_receiver.received("/hook")]
    assert ("firing", "app/store_unreadable/backup_stale") in events
    assert ("resolved", "app/backup_stale") not in events
    assert "app/backup_stale" in json.loads(cursor)["open"]


def test_snapshot_of_all_definitions(write_config, sample_app):
    """Everything a two-target fleet shows in the UI, by name: a change to any of it is deliberate."""
    path = write_config({"app": sample_app["dsn"],
                         "billing": {"dsn": sample_app["dsn"], "cluster": "main", "stats": {"schedule": "*/1 * * * *"}}},
                        clusters={"main": {"pool_limit": 2}}, metrics={"dsn": sample_app["dsn"]})
    repo = build_definitions(path).get_repository_def()
    graph = repo.asset_graph
    assert sorted(k.to_user_string() for k in graph.get_all_asset_keys()) == [
        "app/backup", "app/backup_retention", "app/restore_verification", "app/stats", "app/stats_report",
        "billing/backup", "billing/backup_retention", "billing/restore_verification", "billing/stats",
        "billing/stats_report"]
    sections = ["findings_activity", "findings_database", "findings_health", "findings_statements", "findings_tables"]
    assert sorted(f"{k.asset_key.to_user_string()}:{k.name}" for k in graph.asset_check_keys) == [
        "app/backup:stored_backup_integrity", "app/restore_verification:restored_copy_matches",
        *(f"app/stats:{c}" for c in sections),
        "billing/backup:stored_backup_integrity", "billing/restore_verification:restored_copy_matches",
        *(f"billing/stats:{c}" for c in sections)]
    assert {graph.get(k).group_name for k in graph.get_all_asset_keys()} == {"app", "billing"}
    # one stats job per schedule (all its targets in one run), not one per target
    assert sorted(j.name for j in repo.get_all_jobs() if not j.name.startswith("__")) == [
        "backup_app", "backup_billing", "stats_reports", "stats_snapshots", "stats_snapshots_83117196",
        "verify_app", "verify_billing"]
    assert sorted(s.name for s in repo.schedule_defs) == [
        "backup_app_schedule", "backup_billing_schedule", "stats_reports_schedule", "stats_snapshots_83117196_schedule",
        "stats_snapshots_schedule", "verify_app_schedule", "verify_billing_schedule"]
    assert sorted(s.name for s in repo.sensor_defs) == ["dbops_alerts", "dbops_pool_limits"]
    # A local-directory store is shown as what it is, never as S3.
    assert graph.get(names.asset_key("app", "backup")).kinds == {"postgres", "file"}


def test_the_sensor_publishes_open_alerts_for_dbops_alerts(write_config, capsys):
    """Without any sink, an operator still sees what is open: the tick publishes it, `dbops alerts` lists it."""
    from dbops_pipelines.cli import main

    path = write_config({"app": UNREACHABLE})
    defs = build_definitions(path)
    with dg.instance_for_test() as instance:
        tick(defs, discover_features(), instance, path)
    assert main(["alerts", "--json"]) == 1
    board = json.loads(capsys.readouterr().out)
    assert board["sensor_running"] is True
    assert {a["key"] for a in board["alerts"]} == {"app/backup_stale", "app/verification_stale"}


def test_terminating_a_verification_run_drops_its_scratch_database(write_config, sample_app, pg_cluster):
    """A SIGTERM to the process running the step (a service manager or container runtime stopping
    the run worker) unwinds like Ctrl-C: the query is cancelled, the scratch database dropped, no
    report recorded, the run fails, and nothing is retried."""
    import os
    import signal
    import threading
    import time

    from dbops_pipelines import fleet
    from dbops_pipelines.context import FleetContext

    path = write_config({"app": {"dsn": sample_app["dsn"], "verification": {"sanity_checks": [
        {"name": "slow", "sql": "SELECT pg_sleep(30) IS NOT NULL", "expect": True}]}}})
    fleet.backup_target(FleetContext(load_config(path)), "app")
    defs = build_definitions(path)
    sent = threading.Event()

    def terminate_during_the_sanity_query():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = pg_cluster.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%'")
            if rows[0][0]:
                os.kill(os.getpid(), signal.SIGTERM)
                sent.set()
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=terminate_during_the_sanity_query, daemon=True)
    watcher.start()
    started = time.monotonic()
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("verify_app").execute_in_process(instance=instance, raise_on_error=False)
    watcher.join(5)
    assert sent.is_set() and not result.success
    assert not [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    assert time.monotonic() - started < 25   # the 30 s query was cancelled, not waited out
    left = pg_cluster.execute("SELECT datname FROM pg_database WHERE datname LIKE 'dbops_verify_%'")
    assert left == []
    assert not list((path.parent / "store").rglob("_verifications/*"))


def _check_event(instance, run_id: str, key: dg.AssetCheckKey, passed: bool | None) -> None:
    """Write what Dagster writes for a check: planned when its run is created (passed=None),
    evaluated when the run gets to it."""
    import time

    from dagster._core.definitions.asset_checks.asset_check_evaluation import (AssetCheckEvaluation,
                                                                               AssetCheckEvaluationPlanned)
    from dagster._core.events import DagsterEvent
    from dagster._core.events.log import EventLogEntry

    if passed is None:
        kind, data = dg.DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED, AssetCheckEvaluationPlanned(asset_key=key.asset_key, check_name=key.name)
    else:
        kind, data = dg.DagsterEventType.ASSET_CHECK_EVALUATION, AssetCheckEvaluation(
            asset_key=key.asset_key, check_name=key.name, passed=passed, metadata={},
            severity=dg.AssetCheckSeverity.ERROR, description=f"run {run_id}")
    event = DagsterEvent(kind.value, job_name="verify_app", event_specific_data=data)
    instance.event_log_storage.store_event(EventLogEntry(
        error_info=None, level="debug", user_message="", run_id=run_id, timestamp=time.time(), dagster_event=event))


def test_a_check_that_ends_after_a_later_planned_one_still_alerts(write_config, http_receiver):
    """Execution ids are given when a check is planned: run A planned, run B planned, B passes,
    tick, then A fails. A's failure must still alert (a mark at B's id would skip it)."""
    path = write_config({"app": UNREACHABLE}, alerts={"sinks": [
        {"kind": "webhook", "url": http_receiver.url("/hook"), "min_severity": "info"}]})
    defs = build_definitions(path)
    specs = [s for s in discover_features() if s.conditions is None]   # runs and checks only
    key = names.check_key("app", names.BACKUP, names.STORED_BACKUP_INTEGRITY)
    with dg.instance_for_test() as instance:
        for run_id in ("run-a", "run-b"):   # both runs still going
            instance.add_run(dg.DagsterRun(job_name="verify_app", run_id=run_id, status=dg.DagsterRunStatus.STARTED))
        _check_event(instance, "run-a", key, None)
        _check_event(instance, "run-b", key, None)
        cursor = tick(defs, specs, instance, path)
        _check_event(instance, "run-b", key, True)
        cursor = tick(defs, specs, instance, path, cursor)
        _check_event(instance, "run-a", key, False)
        tick(defs, specs, instance, path, cursor)
    fired = [r.body["alert"] for r in http_receiver.received("/hook") if r.body["event"] == "firing"]
    assert [(a["key"], a["run_id"]) for a in fired] == [("app/check_failed/stored_backup_integrity", "run-a")]


def test_materialize_all_alerts_for_the_step_that_failed(write_config, http_receiver, sample_app):
    """"Materialize all" in a target's group: the backup succeeds, the verification cannot run
    (its staging server is down). The alert is the verification's; the backup's run alert is not
    fired, and the check-only run that follows resolves nothing it did not do."""
    path = write_config({"app": {"dsn": sample_app["dsn"], "verification": {
        "server_dsn": "postgresql://dbops@127.0.0.1:1/postgres"}}}, alerts={"sinks": [
            {"kind": "webhook", "url": http_receiver.url("/hook"), "min_severity": "info"}]})
    defs = build_definitions(path)
    specs = [s for s in discover_features() if s.conditions is None]
    keys = [names.asset_key("app", a) for a in (names.BACKUP, names.BACKUP_RETENTION, names.RESTORE_VERIFICATION)]
    implicit = defs.get_repository_def().get_implicit_job_def_for_assets(keys)
    with dg.instance_for_test() as instance:
        result = implicit.execute_in_process(instance=instance, asset_selection=keys, raise_on_error=False)
        assert not result.success
        cursor = tick(defs, specs, instance, path)
        check_only = dg.define_asset_job("check_only", selection=dg.AssetSelection.checks(
            names.check_key("app", names.BACKUP, names.STORED_BACKUP_INTEGRITY)))
        assert dg.Definitions.merge(defs, dg.Definitions(jobs=[check_only])).resolve_job_def("check_only").execute_in_process(
            instance=instance).success
        tick(defs, specs, instance, path, cursor)
    events = [(r.body["event"], r.body["alert"]["key"]) for r in http_receiver.received("/hook")]
    assert events == [("firing", "app/run_failed/restore_verification")]
    [hook] = http_receiver.received("/hook")
    assert "not run" in hook.body["alert"]["error_excerpt"] or "cannot connect" in hook.body["alert"]["error_excerpt"]


def test_an_operators_mistake_fails_the_integrity_run_not_the_backups_check(write_config, sample_app, monkeypatch):
    """With the key missing from the environment the stored backup cannot be checked: the run
    fails with the fix, and no failed check is recorded against a good backup."""
    path = write_config({"app": sample_app["dsn"]})
    defs = build_definitions(path)
    check_only = dg.define_asset_job("check_only", selection=dg.AssetSelection.checks(
        names.check_key("app", names.BACKUP, names.STORED_BACKUP_INTEGRITY)))
    with_check = dg.Definitions.merge(defs, dg.Definitions(jobs=[check_only]))
    with dg.instance_for_test() as instance:
        assert defs.resolve_job_def("backup_app").execute_in_process(instance=instance).success
        monkeypatch.delenv("DBOPS_TEST_BACKUP_KEY")
        result = with_check.resolve_job_def("check_only").execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    assert [c for c in result.get_asset_check_evaluations() if not c.passed] == []
    [failure] = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert "DBOPS_TEST_BACKUP_KEY" in str(failure.event_specific_data.error)


def test_a_partial_backup_target_is_judged_by_its_own_kind(write_config, sample_app):
    """A target configured `kind: schema` is fresh after its schema backup (not "no valid full
    backup" forever) and its verification picks that backup."""
    from dbops_pipelines import fleet
    from dbops_pipelines.context import FleetContext
    from dbops_pipelines.defs.backups import conditions
    from dbops_pipelines.verification.runner import pick_backup

    path = write_config({"app": {"dsn": sample_app["dsn"], "backup": {"kind": "schema"}}})
    ctx = FleetContext(load_config(path))
    made = fleet.backup_target(ctx, "app")
    now = datetime.now(timezone.utc)
    obs = {o.key: o for o in conditions(ctx, "app", now)}
    assert obs["app/backup_stale"].firing is False
    assert pick_backup(ctx, "app", None).backup_id == made.backup_id


def test_a_verification_on_staging_takes_the_staging_servers_pool(write_config, sample_app):
    path = write_config({"app": {"dsn": sample_app["dsn"], "verification": {
        "server_dsn": "postgresql://dbops@staging.internal:6543/postgres"}}, "billing": sample_app["dsn"]})
    defs = build_definitions(path)
    pool = lambda t, a: defs.resolve_assets_def(names.asset_key(t, a)).op.pool  # noqa: E731
    assert pool("app", names.RESTORE_VERIFICATION) == "pg_server_staging_internal_6543"
    assert pool("billing", names.RESTORE_VERIFICATION) == pool("billing", names.BACKUP) == pool("app", names.BACKUP)


def test_alerts_nothing_can_clear_any_more_are_resolved_once(write_config, http_receiver, sample_app):
    """An upgrade (run alerts once keyed by job) or a removed target must not leave alerts that
    are reminded for ever: they are resolved on the next tick, current ones stay."""
    from dbops_pipelines.alerts.dispatch import AlertState, OpenAlert
    from dbops_pipelines.alerts.model import Alert

    path = write_config({"app": sample_app["dsn"]}, alerts={"sinks": [
        {"kind": "webhook", "url": http_receiver.url("/hook"), "min_severity": "info"}]})
    defs = build_definitions(path)
    specs = [s for s in discover_features() if s.conditions is None]
    state = AlertState()
    stamp = datetime.now(timezone.utc).isoformat()
    for key in ("app/run_failed/backup_app", "app/store_unreadable", "gone/backup_stale",
                "app/check_failed/restore_verification", "app/run_failed/backup"):
        state.open[key] = OpenAlert(Alert(key, key.split("/")[0], key.split("/")[1], "critical", "t", "m", stamp), stamp, stamp)
    with dg.instance_for_test() as instance:
        cursor = tick(defs, specs, instance, path, state.to_json())
    resolved = sorted(r.body["alert"]["key"] for r in http_receiver.received("/hook") if r.body["event"] == "resolved")
    assert resolved == ["app/check_failed/restore_verification", "app/run_failed/backup_app", "app/store_unreadable",
                        "gone/backup_stale"]
    assert list(json.loads(cursor)["open"]) == ["app/run_failed/backup"]


def test_a_first_tick_with_nothing_recent_does_not_replay_old_failures(write_config, http_receiver):
    """After an upgrade or on a new instance the sensor looks back one hour. An older failure must
    not come back as a new alert on the tick after (Dagster's cursor after reading nothing means
    "from the first event ever")."""
    path = write_config({"app": UNREACHABLE}, alerts={"sinks": [
        {"kind": "webhook", "url": http_receiver.url("/hook"), "min_severity": "info"}]})
    defs = build_definitions(path)
    specs = [s for s in discover_features() if s.conditions is None]
    later = datetime.now(timezone.utc) + timedelta(hours=3)
    with dg.instance_for_test() as instance:
        assert not defs.resolve_job_def("backup_app").execute_in_process(instance=instance, raise_on_error=False).success
        cursor = tick(defs, specs, instance, path, now=later)
        tick(defs, specs, instance, path, cursor, now=later)
    assert http_receiver.received("/hook") == []


def test_a_retried_firing_is_dropped_once_its_alert_resolved():
    from dbops_pipelines.alerts.dispatch import AlertState
    from dbops_pipelines.alerts.model import Alert

    stamp = datetime.now(timezone.utc).isoformat()
    alert = Alert("app/backup_stale", "app", "backup_stale", "critical", "t", "m", stamp)
    state = AlertState(pending=[{"sink": "pagerduty", "kind": "firing", "alert": alert.to_dict(), "since": stamp},
                                {"sink": "pagerduty", "kind": "resolved", "alert": alert.to_dict(), "since": stamp}])
    assert [(n.kind, sink) for n, sink in state.take_pending()] == [("resolved", "pagerduty")]


def test_another_teams_failed_run_raises_nothing(write_config, http_receiver):
    path = write_config({"app": UNREACHABLE}, alerts={"sinks": [
        {"kind": "webhook", "url": http_receiver.url("/hook"), "min_severity": "info"}]})
    defs = build_definitions(path)
    specs = [s for s in discover_features() if s.conditions is None]

    @dg.op
    def breaks():
        raise dg.Failure(description="someone else's problem")

    @dg.job
    def reports_job():
        breaks()

    with dg.instance_for_test() as instance:
        assert not reports_job.execute_in_process(instance=instance, raise_on_error=False).success
        tick(defs, specs, instance, path)
    assert http_receiver.received("/hook") == []
