"""Stats in Dagster: one run snapshots the whole fleet; a finding shows in the section check,
alerts through the sinks (one alert per target, code and object) and resolves once it is gone;
an unreachable target fails the run after the others are kept, and alerts for itself alone."""

from __future__ import annotations

import time

import dagster as dg
import psycopg

from dbops_pipelines.config import load_config
from dbops_pipelines.defs import names
from dbops_pipelines.defs.alerts import alert_scope, evaluate_alerts
from dbops_pipelines.defs.spec import discover_features
from dbops_pipelines.defs.stats import check_name
from dbops_pipelines.definitions import build_definitions
from dbops_pipelines.stats.service import open_store

UNREACHABLE = "postgresql://dbops@127.0.0.1:1/down"



def tick(defs, instance, path, cursor=None):
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor)
    return evaluate_alerts(ctx, load_config(path), alert_scope(defs), discover_features()).cursor


def test_fleet_run_findings_alert_and_resolve(write_config, sample_app, metrics_dsn, http_receiver):
    path = write_config(
        {"app": {"dsn": sample_app["dsn"], "stats": {"thresholds": {"idle_in_transaction_seconds": 0.5}}},
         "down": UNREACHABLE},
        metrics={"dsn": metrics_dsn},
        alerts={"sinks": [{"kind": "webhook", "url": http_receiver.url("/hook"), "min_severity": "info"}]})
    defs = build_definitions(path)
    dg.Definitions.validate_loadable(defs)     # as the webserver loads it: names unique, jobs resolvable
    job = defs.resolve_job_def("stats_snapshots")
    assert defs.resolve_job_def("stats_reports") and {s.name for s in defs.schedules} >= {
        "stats_snapshots_schedule", "stats_reports_schedule"}
    app_key, down_key = names.asset_key("app", names.STATS), names.asset_key("down", names.STATS)
    assert set(job.asset_layer.executable_asset_keys) >= {app_key, down_key}

    idle = psycopg.connect(sample_app["dsn"])
    idle.execute("SELECT 1")          # now idle in transaction
    pid = idle.info.backend_pid
    time.sleep(1.0)
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(instance=instance, raise_on_error=False)
        assert not result.success     # the unreachable target fails the run...
        # ...after the reachable one was snapshotted, kept and checked
        app_event = instance.get_latest_materialization_event(app_key)
        assert app_event is not None and instance.get_latest_materialization_event(down_key) is None
        meta = app_event.asset_materialization.metadata
        assert meta["kept_in_history"].value is True
        assert meta["connections"].value >= 1 and 0 <= meta["cache_hit_ratio"].value <= 1
        assert f"pid {pid}" in meta["summary"].value
        checks = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(app_key, check_name("activity")), dg.AssetCheckKey(app_key, check_name("tables"))])
        activity = checks[dg.AssetCheckKey(app_key, check_name("activity"))]
        assert activity.event.dagster_event.event_specific_data.passed is False

        cursor = tick(defs, instance, path)
        fired = {r.body["alert"]["key"]: r.body for r in http_receiver.received("/hook")}
        finding_key = f"app/stats/activity/idle_in_transaction/pid {pid}"
        assert fired[finding_key]["alert"]["condition"] == "idle_in_transaction"
        assert "pg_terminate_backend" in fired[finding_key]["alert"]["message"]
        assert fired["down/run_failed/stats"]["alert"]["run_id"] == result.run_id
        assert "down/stats_stale" in fired                       # never had a snapshot
        assert "app/run_failed/stats" not in fired and "app/stats_stale" not in fired
        assert not any(k.startswith("app/check_failed/") for k in fired)   # findings alert once, by object

        idle.rollback()
        idle.close()
        again = defs.get_repository_def().get_implicit_job_def_for_assets([app_key]).execute_in_process(
            instance=instance, asset_selection=[app_key])
        assert again.success
        tick(defs, instance, path, cursor)
    resolved = [r.body for r in http_receiver.received("/hook") if r.body["event"] == "resolved"]
    assert finding_key in {b["alert"]["key"] for b in resolved}
    with open_store(load_config(path)) as store:
        assert store.last_taken_at("app") is not None and store.last_taken_at("down") is None


def test_metrics_database_down_fails_the_run_and_keeps_the_numbers(write_config, sample_app, http_receiver):
    path = write_config({"app": sample_app["dsn"], "down": UNREACHABLE},
                        metrics={"dsn": "postgresql://dbops@127.0.0.1:1/metrics"},
                        alerts={"sinks": [{"kind": "webhook", "url": http_receiver.url("/hook"), "min_severity": "info"}]})
    defs = build_definitions(path)
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("stats_snapshots").execute_in_process(instance=instance, raise_on_error=False)
        assert not result.success
        failure = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE][0]
        assert "not kept" in failure.step_failure_data.user_failure_data.description
        shown = instance.get_latest_materialization_event(names.asset_key("app", names.STATS)).asset_materialization
        assert shown.metadata["kept_in_history"].value is False and "database_size_bytes" in shown.metadata  # not lost
        assert names.INCOMPLETE_TAG in shown.tags           # ...but not counted as the feature's success
        tick(defs, instance, path)
    fired = {r.body["alert"]["key"] for r in http_receiver.received("/hook")}
    # app's snapshot was shown but not kept: its run failed as much as the unreachable target's did
    assert {"app/run_failed/stats", "down/run_failed/stats", "app/store_unreadable/stats_stale"} <= fired
    assert "app/stats_stale" not in fired          # unknown is not "stale": never judged on a guess


def test_daily_report_is_kept_beside_the_backups(write_config, sample_app, metrics_dsn, tmp_path):
    path = write_config({"app": sample_app["dsn"]}, metrics={"dsn": metrics_dsn})
    defs = build_definitions(path)
    report_key = names.asset_key("app", names.STATS_REPORT)
    with dg.instance_for_test() as instance:
        for _ in range(2):
            assert defs.resolve_job_def("stats_snapshots").execute_in_process(instance=instance).success
        assert defs.resolve_job_def("stats_reports").execute_in_process(instance=instance).success
        location = instance.get_latest_materialization_event(report_key).asset_materialization.metadata["report"].value
    stored = list((tmp_path / "store" / "reports" / "stats" / "app").glob("*.html"))
    assert len(stored) == 1 and stored[0].name in location      # the metadata says where it is
    assert "<svg" in stored[0].read_text()


def test_a_section_not_collected_resolves_none_of_its_findings(write_config, metrics_dsn):
    """Not seeing a finding because its section failed is not seeing it gone; a stale newest
    snapshot judges nothing either."""
    from datetime import datetime, timedelta, timezone

    from dbops_pipelines.alerts.dispatch import AlertState, plan_notifications
    from dbops_pipelines.context import FleetContext
    from dbops_pipelines.defs.stats import fleet_conditions
    from dbops_pipelines.findings import Finding
    from dbops_pipelines.stats.model import Snapshot

    path = write_config({"app": "postgresql://dbops@127.0.0.1:1/app"}, metrics={"dsn": metrics_dsn})
    cfg = load_config(path)
    ctx, state, start = FleetContext(cfg), AlertState(), datetime.now(timezone.utc) - timedelta(minutes=20)
    dead = Finding("dead_tuples", "warning", "app", "public.t", "m", "r", section="tables")
    broken = Finding("snapshot_incomplete", "warning", "app", "tables", "timeout", "r", section="tables")

    def tick(minutes: int, findings: list[Finding]) -> list[tuple[str, str]]:
        at = start + timedelta(minutes=minutes)
        with open_store(cfg) as store:
            store.save(Snapshot("app", at, 150004, 0.01, 0.1, findings=findings))
        sent = plan_notifications(fleet_conditions(ctx, ["app"], at), state, at, timedelta(hours=4))
        return [(n.kind, n.alert.key) for n in sent if "/stats/" in n.alert.key]

    assert tick(0, [dead]) == [("firing", "app/stats/tables/dead_tuples/public.t")]
    assert tick(5, [broken]) == [("firing", "app/stats/tables/snapshot_incomplete/tables")]   # dead_tuples stays open
    assert set(state.open) >= {"app/stats/tables/dead_tuples/public.t"}
    assert sorted(tick(10, [])) == [("resolved", "app/stats/tables/dead_tuples/public.t"),
                                    ("resolved", "app/stats/tables/snapshot_incomplete/tables")]
    # a newest snapshot older than max_age_minutes (30) cannot resolve anything
    tick(11, [dead])
    at = start + timedelta(minutes=11 + 31)
    sent = plan_notifications(fleet_conditions(ctx, ["app"], at), state, at, timedelta(hours=4))
    assert "app/stats/tables/dead_tuples/public.t" in state.open
    assert [(n.kind, n.alert.key) for n in sent] == [("firing", "app/stats_stale")]


def test_stats_alerts_resolve_once_stats_no_longer_applies(write_config, sample_app, metrics_dsn):
    from dbops_pipelines.alerts.dispatch import AlertState, OpenAlert
    from dbops_pipelines.alerts.model import Alert
    from dbops_pipelines.defs.alerts import obsolete_observations

    keys = ["app/stats/tables/dead_tuples/public.t", "app/stats_stale", "app/store_unreadable/stats_stale",
            "app/run_failed/stats", "app/backup_stale", "app/run_failed/backup"]
    state = AlertState(open={k: OpenAlert(Alert(k, "app", "x", "warning", k, "m", "2026-12-01T00:00:00+00:00"),
                                           "2026-12-01T00:00:00+00:00", "2026-12-01T00:00:00+00:00") for k in keys})

    def obsolete(path):
        defs = build_definitions(path)
        return {o.key for o in obsolete_observations(state, load_config(path), alert_scope(defs), discover_features())}

    assert obsolete(write_config({"app": sample_app["dsn"]}, metrics={"dsn": metrics_dsn})) == set()
    turned_off = {"app/stats/tables/dead_tuples/public.t", "app/stats_stale", "app/store_unreadable/stats_stale",
                  "app/run_failed/stats"}
    assert obsolete(write_config({"app": {"dsn": sample_app["dsn"], "stats": {"enabled": False}}},
                                 metrics={"dsn": metrics_dsn})) == turned_off
    assert obsolete(write_config({"app": sample_app["dsn"]})) == turned_off      # no metrics: section any more


def test_a_section_check_run_alone_evaluates_it(write_config, sample_app, metrics_dsn):
    path = write_config({"app": sample_app["dsn"]}, metrics={"dsn": metrics_dsn})
    defs = build_definitions(path)
    check = dg.AssetCheckKey(names.asset_key("app", names.STATS), check_name("tables"))
    job = defs.resolve_job_def("stats_snapshots").get_subset(asset_selection=set(), asset_check_selection={check})
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(instance=instance)
        assert result.success
        [evaluation] = result.get_asset_check_evaluations()
        assert evaluation.asset_check_key == check
        assert instance.get_latest_materialization_event(check.asset_key) is None    # a check run materializes nothing
