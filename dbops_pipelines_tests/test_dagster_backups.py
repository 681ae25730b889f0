"""The Dagster layer over real services: the backup job materializes, its check re-reads the
stored object, retention runs, failures fail the run loudly, and the definitions load as the
webserver loads them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from dbops_pipelines.defs.names import asset_key
from dbops_pipelines.definitions import build_definitions


def run_job(defs: dg.Definitions, name: str, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def(name).execute_in_process(instance=instance, raise_on_error=False)


def test_backup_job_materializes_checks_and_applies_retention(write_config, sample_app):
    defs = build_definitions(write_config({"app": sample_app["dsn"]}))
    with dg.instance_for_test() as instance:
        result = run_job(defs, "backup_app", instance)
        assert result.success
        [mat] = [m for m in result.asset_materializations_for_node("app__backup") if m.asset_key == asset_key("app", "backup")]
        meta = mat.metadata
        assert meta["dagster/row_count"].value == sum(sample_app["counts"].values())
        assert meta["tables"].value == len(sample_app["counts"])
        assert meta["size_bytes"].value > 0 and meta["throughput_mib_per_s"].value > 0
        assert len(meta["sha256"].value) == 64 and meta["location"].value.startswith("file://")
        rows = {r.data["table"]: r.data["rows"] for r in meta["table_rows"].value.records}
        assert rows == sample_app["counts"]

        [check] = result.get_asset_check_evaluations()
        assert check.passed and check.check_name == "stored_backup_integrity"
        assert check.metadata["backup_id"].value == meta["backup_id"].value
        retention = instance.get_latest_materialization_event(asset_key("app", "backup_retention"))
        assert retention.asset_materialization.metadata["deleted"].value == 0


def test_check_fails_on_a_corrupted_object(write_config, sample_app):
    defs = build_definitions(write_config({"app": sample_app["dsn"]}))
    with dg.instance_for_test() as instance:
        assert run_job(defs, "backup_app", instance).success
        meta = instance.get_latest_materialization_event(asset_key("app", "backup")).asset_materialization.metadata
        path = Path(meta["location"].value.removeprefix("file://"))
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        check_job = dg.define_asset_job("check_only", selection=dg.AssetSelection.checks(dg.AssetCheckKey(asset_key("app", "backup"), "stored_backup_integrity")))
        with_check = dg.Definitions.merge(defs, dg.Definitions(jobs=[check_job]))
        result = run_job(with_check, "check_only", instance)
        [check] = result.get_asset_check_evaluations()
        assert not check.passed
        assert "failed authentication" in check.metadata["finding"].value
        assert meta["backup_id"].value in check.metadata["finding"].value


def test_unreachable_target_fails_the_run_with_what_to_do(write_config, monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "pw-that-must-not-leak")
    defs = build_definitions(write_config({"app": "postgresql://dbops@127.0.0.1:1/app"}))
    with dg.instance_for_test() as instance:
        result = run_job(defs, "backup_app", instance)
        assert not result.success
        [failure] = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
        text = str(failure.event_specific_data.error)
        assert "cannot connect to app" in text and "What to do" in text
        logs = "\n".join(str(r.user_message) for r in instance.all_logs(result.run_id))
        assert "pw-that-must-not-leak" not in logs + text


def test_schedule_per_target_uses_configured_cron_and_timezone(write_config, sample_app):
    defs = build_definitions(write_config({
        "app": sample_app["dsn"],
        "billing": {"dsn": sample_app["dsn"], "backup": {"schedule": "30 3 * * *", "timezone": "Europe/Berlin"}},
    }))
    app = defs.resolve_schedule_def("backup_app_schedule")
    billing = defs.resolve_schedule_def("backup_billing_schedule")
    assert (app.cron_schedule, app.execution_timezone) == ("0 2 * * *", "UTC")
    assert (billing.cron_schedule, billing.execution_timezone) == ("30 3 * * *", "Europe/Berlin")
    assert app.default_status == dg.DefaultScheduleStatus.RUNNING
    with dg.instance_for_test() as instance:
        ctx = dg.build_schedule_context(instance=instance)
        assert len(billing.evaluate_tick(ctx).run_requests) == 1
    assert billing.job_name == "backup_billing"
    assert defs.resolve_job_def("backup_billing").tags["dbops/target"] == "billing"
    # Both targets live on one server, so their backups share one concurrency pool.
    pools = {defs.resolve_assets_def(asset_key(t, "backup")).op.pool for t in ("app", "billing")}
    assert len(pools) == 1 and pools.pop().startswith("pg_server_127_0_0_1_")


def test_definitions_load_as_the_webserver_loads_them(write_config, sample_app):
    path = write_config({"app": sample_app["dsn"], "billing": sample_app["dsn"]})
    env = {**os.environ, "DBOPS_CONFIG": str(path)}
    dagster = Path(sys.executable).with_name("dagster")
    ok = subprocess.run([str(dagster), "definitions", "validate", "-m", "dbops_pipelines.definitions"],
                        capture_output=True, text=True, env=env, timeout=120, cwd=path.parent)
    assert ok.returncode == 0, ok.stdout + ok.stderr

    path.write_text("targets: [not, a, mapping]\n")
    bad = subprocess.run([str(dagster), "definitions", "validate", "-m", "dbops_pipelines.definitions"],
                         capture_output=True, text=True, env=env, timeout=120, cwd=path.parent)
    assert bad.returncode != 0 and "is invalid: targets" in bad.stdout + bad.stderr


def test_transient_failures_are_retried_then_fail(write_config):
    defs = build_definitions(write_config({"app": "postgresql://dbops@127.0.0.1:1/app"},
                                          defaults={"run_retries": 2, "retry_delay_seconds": 0, "connect_retries": 0}))
    with dg.instance_for_test() as instance:
        result = run_job(defs, "backup_app", instance)
        assert not result.success
        retries = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
        assert len(retries) == 2
        [failure] = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
        assert "cannot connect to app" in str(failure.event_specific_data.error)
