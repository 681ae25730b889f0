"""Restore verification through Dagster: the verify job runs only the check, takes launchpad
config, records per-table counts and the RTO, and a bad backup fails the check."""

from __future__ import annotations

import json
import logging

import dagster as dg

from dbops_pipelines import fleet
from dbops_pipelines.context import FleetContext
from dbops_pipelines_tests.dbcompare import tamper_manifest
from dbops_pipelines.config import load_config
from dbops_pipelines.defs.names import asset_key
from dbops_pipelines.definitions import build_definitions


def test_verify_job_with_launchpad_config(write_config, sample_app):
    path = write_config({"app": sample_app["dsn"]})
    cfg = load_config(path)
    older = fleet.backup_target(FleetContext(cfg), "app")
    fleet.backup_target(FleetContext(cfg), "app")
    defs = build_definitions(path)
    run_config = {"ops": {"app__restore_verification": {"config": {"backup_id": older.backup_id}}}}
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("verify_app").execute_in_process(instance=instance, run_config=run_config)
        assert result.success
        [check] = result.get_asset_check_evaluations()
        assert check.passed and check.check_name == "restored_copy_matches"
        assert check.metadata["backup_id"].value == older.backup_id
        [mat] = result.asset_materializations_for_node("app__restore_verification")
        meta = mat.metadata
        assert meta["backup_id"].value == older.backup_id
        # No staging server configured: the choice is visible on the asset and as a WARNING in the run log.
        assert meta["restored_on"].value == "same_server" and "production server" in meta["server_notice"].value
        warnings = [r for r in instance.all_logs(result.run_id) if r.level == logging.WARNING]
        assert any("restoring into a scratch database on the production server" in r.user_message for r in warnings)
        assert meta["rto_seconds"].value > 0
        rows = {r.data["table"]: (r.data["expected_rows"], r.data["actual_rows"]) for r in meta["tables"].value.records}
        assert rows == {t: (n, n) for t, n in sample_app["counts"].items()}
        assert not result.asset_materializations_for_node("app__backup")  # verification alone, no backup


def test_failed_verification_fails_the_check(write_config, sample_app):
    path = write_config({"app": sample_app["dsn"]})
    cfg = load_config(path)
    manifest = fleet.backup_target(FleetContext(cfg), "app")
    tamper_manifest(cfg, manifest, lambda raw: raw["table_rows"].__setitem__("public.tenants", raw["table_rows"]["public.tenants"] + 7))
    defs = build_definitions(path)
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("verify_app").execute_in_process(instance=instance)
        [check] = result.get_asset_check_evaluations()
        assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
        assert "table public.tenants has" in check.metadata["findings"].value
        # The evidence is kept: the failed verification is still materialized with its report.
        [mat] = result.asset_materializations_for_node("app__restore_verification")
        assert mat.metadata["outcome"].value == "failed" and mat.metadata["report"].value.startswith("file://")
        assert manifest.backup_id in check.description


def test_backup_job_does_not_run_verification_and_schedules_exist(write_config, sample_app):
    defs = build_definitions(write_config({
        "app": {"dsn": sample_app["dsn"], "verification": {"schedule": "0 5 * * 6", "timezone": "Europe/Paris"}}}))
    backup_job = defs.resolve_job_def("backup_app")
    with dg.instance_for_test() as instance:
        result = backup_job.execute_in_process(instance=instance)
        assert {c.check_name for c in result.get_asset_check_evaluations()} == {"stored_backup_integrity"}
        made = {e.event_specific_data.materialization.asset_key for e in result.get_asset_materialization_events()}
        assert made == {asset_key("app", "backup"), asset_key("app", "backup_retention")}
    schedule = defs.resolve_schedule_def("verify_app_schedule")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 5 * * 6", "Europe/Paris")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    # Verification and backups of one server share its concurrency pool.
    verification = defs.resolve_assets_def(asset_key("app", "restore_verification"))
    assert verification.op.pool == defs.resolve_assets_def(asset_key("app", "backup")).op.pool


def test_the_asset_pages_materialize_does_the_obvious_thing(write_config, sample_app):
    """"Materialize" on the backup asset backs up and applies retention, and runs no restore: the
    UI launches the implicit asset job with every asset of the backup's step (it cannot be
    subset) and their checks; restore verification is an asset of its own, not one of them."""
    defs = build_definitions(write_config({"app": sample_app["dsn"]}))
    step = defs.resolve_assets_def(asset_key("app", "backup"))
    assert set(step.keys) == {asset_key("app", "backup"), asset_key("app", "backup_retention")}
    assert not step.can_subset
    implicit = defs.get_repository_def().get_implicit_job_def_for_assets(list(step.keys))
    with dg.instance_for_test() as instance:
        result = implicit.execute_in_process(instance=instance, asset_selection=list(step.keys))
        assert result.success
        made = {e.event_specific_data.materialization.asset_key for e in result.get_asset_materialization_events()}
        assert made == {asset_key("app", "backup"), asset_key("app", "backup_retention")}
        assert {c.check_name for c in result.get_asset_check_evaluations()} == {"stored_backup_integrity"}
