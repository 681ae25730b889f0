"""The alert sensor through Dagster's test utilities, delivering to real local receivers."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pytest

from dbops_pipelines.config import load_config
from dbops_pipelines.defs.alerts import alert_scope, evaluate_alerts
from dbops_pipelines.defs.spec import discover_features
from dbops_pipelines.defs.names import asset_key
from dbops_pipelines.definitions import build_definitions
from dbops_pipelines_tests.receivers import closed_port_url

UNREACHABLE = "postgresql://dbops@127.0.0.1:1/app"


@pytest.fixture
def alerting(write_config, http_receiver, monkeypatch):
    """Factory: config with a webhook (warning+) and a PagerDuty sink (critical) on the receiver."""
    monkeypatch.setenv("PD_KEY", "pd-routing-key-secret")

    def make(dsn: str, extra_sinks: list | None = None) -> Path:
        sinks = [{"kind": "webhook", "url": http_receiver.url("/hook"), "min_severity": "warning"},
                 {"kind": "pagerduty", "routing_key_env": "PD_KEY", "url": http_receiver.url("/pagerduty"),
                  "min_severity": "critical"}] + (extra_sinks or [])
        return write_config({"app": {"dsn": dsn, "backup": {"rpo_hours": 24}}},
                            alerts={"ui_base_url": "http://dagster.example:3000", "reminder_minutes": 60, "sinks": sinks})
    return make


def tick(defs, instance, cursor=None, now=None, path=None):
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor)
    result = evaluate_alerts(ctx, load_config(path), alert_scope(defs), discover_features(), now=now)
    return result.cursor


def hooks(receiver, condition=None):
    out = [r.body for r in receiver.received("/hook")]
    return [h for h in out if condition is None or h["alert"]["condition"] == condition]


def test_failed_run_alerts_once_reminds_and_resolves(alerting, http_receiver, sample_app, monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "pg-password-never-shown")
    path = alerting(UNREACHABLE)
    defs = build_definitions(path)
    with dg.instance_for_test() as instance:
        failed = defs.resolve_job_def("backup_app").execute_in_process(instance=instance, raise_on_error=False)
        assert not failed.success
        cursor = tick(defs, instance, path=path)

        [hook] = hooks(http_receiver, "run_failed")
        alert = hook["alert"]
        assert hook["event"] == "firing" and alert["target"] == "app" and alert["run_id"] == failed.run_id
        assert alert["run_url"] == f"http://dagster.example:3000/runs/{failed.run_id}"
        assert "cannot connect to app" in alert["error_excerpt"] and "backup_app" in alert["title"]
        assert alert["occurred_at"].startswith(str(datetime.now(timezone.utc).year))
        pd = [r.body for r in http_receiver.received("/pagerduty") if r.body["dedup_key"] == alert["key"]]
        assert pd[0]["event_action"] == "trigger"
        everything = json.dumps([r.body for r in http_receiver.requests])
        assert "pg-password-never-shown" not in everything and "pd-routing-key-secret" not in everything.replace(
            '"routing_key": "pd-routing-key-secret"', "")

        # Staleness is alerted too: this target has never had a backup.
        assert [h["alert"]["severity"] for h in hooks(http_receiver, "backup_stale")] == ["critical"]

        cursor = tick(defs, instance, cursor, path=path)  # same conditions: no new messages
        assert len(hooks(http_receiver, "run_failed")) == 1
        later = datetime.now(timezone.utc) + timedelta(minutes=61)
        cursor = tick(defs, instance, cursor, now=later, path=path)
        assert [h["event"] for h in hooks(http_receiver, "run_failed")] == ["firing", "reminder"]

        # The database comes back: the next run succeeds and resolves both alerts.
        alerting(sample_app["dsn"])
        defs = build_definitions(path)  # dbops.yaml is read once per code-location load: reload it
        assert defs.resolve_job_def("backup_app").execute_in_process(instance=instance).success
        tick(defs, instance, cursor, now=later, path=path)
        assert [h["event"] for h in hooks(http_receiver, "run_failed")] == ["firing", "reminder", "resolved"]
        assert [h["event"] for h in hooks(http_receiver, "backup_stale")] == ["firing", "reminder", "resolved"]
        resolves = [r.body for r in http_receiver.received("/pagerduty") if r.body["event_action"] == "resolve"]
        assert alert["key"] in {r["dedup_key"] for r in resolves}


def test_failed_check_alerts_although_the_run_succeeded(alerting, http_receiver, sample_app):
    path = alerting(sample_app["dsn"])
    defs = build_definitions(path)
    with dg.instance_for_test() as instance:
        assert defs.resolve_job_def("backup_app").execute_in_process(instance=instance).success
        cursor = tick(defs, instance, path=path)
        assert hooks(http_receiver, "check_failed") == []
        meta = instance.get_latest_materialization_event(asset_key("app", "backup")).asset_materialization.metadata
        stored = Path(meta["location"].value.removeprefix("file://"))
        data = bytearray(stored.read_bytes())
        data[100] ^= 1
        stored.write_bytes(bytes(data))
        result = defs.resolve_job_def("verify_app").execute_in_process(instance=instance)
        assert result.success  # a failed check does not fail its run ...
        tick(defs, instance, cursor, path=path)
        [hook] = hooks(http_receiver, "check_failed")  # ... but it does alert
        assert hook["alert"]["key"] == "app/check_failed/restored_copy_matches"
        assert hook["alert"]["severity"] == "critical" and "failed authentication" in hook["alert"]["error_excerpt"]


def test_a_sink_that_is_down_does_not_stop_the_others(write_config, http_receiver, sample_app, monkeypatch):
    monkeypatch.setenv("SLACK_URL", http_receiver.url("/slack"))
    path = write_config({"app": UNREACHABLE}, alerts={"sinks": [
        {"kind": "webhook", "url": closed_port_url("/hook"), "min_severity": "info"},
        {"kind": "slack", "url_env": "SLACK_URL", "min_severity": "info"}]})
    defs = build_definitions(path)
    with dg.instance_for_test() as instance:
        defs.resolve_job_def("backup_app").execute_in_process(instance=instance, raise_on_error=False)
        cursor = tick(defs, instance, path=path)
        slack = [r.body["text"] for r in http_receiver.received("/slack")]
        assert any("run of backup_app failed" in t for t in slack)
        failures = json.loads(cursor)["failed_deliveries"]
        assert failures and all(f["sink"].startswith("webhook http://127.0.0.1") and f["attempts"] == 3 for f in failures)


def test_email_routing_by_severity(write_config, smtp_receiver, sample_app, monkeypatch):
    monkeypatch.setenv("SMTP_PW", smtp_receiver.password)
    path = write_config({"app": sample_app["dsn"]}, alerts={"sinks": [
        {"kind": "email", "host": "127.0.0.1", "port": smtp_receiver.port, "username": smtp_receiver.username,
         "password_env": "SMTP_PW", "sender": "dbops@example.test", "recipients": ["oncall@example.test"],
         "min_severity": "critical", "ca_file": str(smtp_receiver.cert_path)}]})
    defs = build_definitions(path)
    with dg.instance_for_test() as instance:
        # Never backed up: backup_stale is critical (mailed); verification_stale is a warning (not mailed).
        tick(defs, instance, path=path)
        subjects = [m.message["Subject"] for m in smtp_receiver.messages]
        assert len(subjects) == 1 and "[CRITICAL] dbops app: no valid full backup within 24 h" == subjects[0]


def test_sensor_is_on_by_default(write_config, sample_app):
    defs = build_definitions(write_config({"app": sample_app["dsn"]}))
    sensor = defs.resolve_sensor_def("dbops_alerts")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
