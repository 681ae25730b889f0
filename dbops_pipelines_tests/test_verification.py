"""Restore verification on real services: a good backup verifies; every kind of damage is
caught as a failed verification naming the backup and the finding; scratch databases are always
dropped; the evidence is kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dbops_pipelines import fleet
from dbops_pipelines.context import FleetContext
from dbops_pipelines.errors import VerificationNotRun
from dbops_pipelines.inventory import inventory
from dbops_pipelines.backup.catalog import list_backups
from dbops_pipelines.backup.manifest import manifest_key
from dbops_pipelines_tests.dbcompare import tamper_manifest
from dbops_pipelines.config import load_config
from dbops_pipelines.verification.report import latest_reports
from dbops_pipelines.verification.runner import verify_backup
from dbops_pipelines_tests.conftest import KEY_ENV


def dbops(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dbops_pipelines.cli", *args], capture_output=True, text=True, timeout=300)


def scratch_databases(pg_cluster) -> list[str]:
    return [r[0] for r in pg_cluster.execute("SELECT datname FROM pg_database WHERE datname LIKE 'dbops_verify_%'")]


@pytest.fixture
def backed_up(write_config, sample_app):
    checks = [{"name": "requisitions present", "sql": "SELECT count(*) FROM requisitions", "expect": ">= 1"},
              {"name": "newest requisition near the backup",
               "sql": "SELECT max(created_at) <= %(backup_started_at)s FROM requisitions", "expect": True}]
    cfg = load_config(write_config({"app": {"dsn": sample_app["dsn"], "verification": {"sanity_checks": checks}}}))
    return cfg, fleet.backup_target(FleetContext(cfg), "app")


def damage_object(manifest, how: str) -> None:
    path = Path(manifest.location.removeprefix("file://"))
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x10
    else:
        del data[len(data) * 3 // 4:]
    path.write_bytes(bytes(data))


SAME_SERVER_WARNING = "restoring into a scratch database on the production server of app (127.0.0.1:{port}): " \
                      "a whole restore's load lands on it; configure verification.server_dsn (a staging server) " \
                      "or set verification.same_server_on_purpose: true"


def test_good_backup_verifies_and_evidence_is_kept(backed_up, pg_cluster, sample_app):
    cfg, manifest = backed_up
    logs: list[str] = []
    report = verify_backup(FleetContext(cfg), "app", run_id="run-1", log=logs.append)
    assert report.passed and report.outcome == "passed", report.summary()
    # No staging server configured: restored on production, said in the log and kept in the report.
    warning = SAME_SERVER_WARNING.format(port=pg_cluster.port)
    assert f"WARNING: {warning}" in logs
    assert logs.index(f"WARNING: {warning}") < next(i for i, m in enumerate(logs) if m.startswith("restored in"))
    assert (report.server_role, report.server_notice) == ("same_server", warning)
    assert {t.table: (t.expected_rows, t.actual_rows) for t in report.tables} == {t: (n, n) for t, n in sample_app["counts"].items()}
    assert all(t.checksum == "match" for t in report.tables)
    assert [s["passed"] for s in report.sanity] == [True, True]
    assert 0 < report.rto_seconds < report.rto_objective_seconds
    assert scratch_databases(pg_cluster) == []

    store = FleetContext(cfg).store
    kept = latest_reports(store, FleetContext(cfg).read_keys, "app")[manifest.backup_id]
    assert kept.run_id == "run-1" and kept.passed
    assert (kept.server_role, kept.server_notice) == ("same_server", warning)  # sealed with the evidence
    [entry] = inventory(FleetContext(cfg), "app")  # the report is not mistaken for a backup
    assert entry.verified and entry.to_dict()["verification"]["outcome"] == "passed"
    listed = dbops("backups", "list", "--json")
    assert json.loads(listed.stdout)[0]["verification"]["passed"] is True


def test_cli_verify_exit_codes_and_json(backed_up):
    cfg, manifest = backed_up
    ok = dbops("verify", "app", "--backup", manifest.backup_id, "--json")
    assert ok.returncode == 0, ok.stderr
    out = json.loads(ok.stdout)
    assert out["outcome"] == "passed" and out["server_role"] == "same_server"
    assert out["server_notice"].startswith("restoring into a scratch database on the production server of app")
    tamper_manifest(cfg, manifest, lambda m: m["table_rows"].update({"public.vendors": m["table_rows"]["public.vendors"] + 1}))
    bad = dbops("verify", "app")
    assert bad.returncode == 1
    assert f"backup {manifest.backup_id} FAILED verification" in bad.stdout
    assert "table public.vendors has" in bad.stdout and "MISMATCH" in bad.stdout
    assert "  WARNING: restoring into a scratch database on the production server of app" in bad.stdout
    assert "WARNING: restoring into a scratch database on the production server of app" in bad.stderr  # the log
    assert "(same server) dropped" in bad.stdout


def test_same_server_on_purpose_silences_the_warning(backed_up, sample_app, write_config):
    cfg, manifest = backed_up
    write_config({"app": {"dsn": sample_app["dsn"], "verification": {"same_server_on_purpose": True}}})
    result = dbops("verify", "app")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stdout + result.stderr and "production server" not in result.stdout + result.stderr
    assert "(same server on purpose) dropped" in result.stdout
    kept = latest_reports(FleetContext(cfg).store, FleetContext(cfg).read_keys, "app")[manifest.backup_id]
    assert kept.passed and (kept.server_role, kept.server_notice) == ("same_server_on_purpose", None)


@pytest.mark.parametrize("how, finding", [("flip", "failed authentication"), ("truncate", "truncated")])
def test_damaged_object_fails_verification(backed_up, pg_cluster, how, finding):
    cfg, manifest = backed_up
    damage_object(manifest, how)
    report = verify_backup(FleetContext(cfg), "app")
    assert not report.passed
    [f] = report.findings
    assert f.kind == "integrity" and finding in f.message and manifest.backup_id in f.message
    assert manifest.backup_id in report.summary() and finding in report.summary()
    assert scratch_databases(pg_cluster) == []
    assert latest_reports(FleetContext(cfg).store, FleetContext(cfg).read_keys, "app")[manifest.backup_id].outcome == "failed"


def test_wrong_key_refuses_and_records_nothing(backed_up, monkeypatch):
    """An operator's wrong key is not evidence against a good backup."""
    cfg, manifest = backed_up
    right = os.environ[KEY_ENV]
    monkeypatch.setenv(KEY_ENV, "C" * 43 + "=")
    with pytest.raises(VerificationNotRun, match=f"key id {manifest.key_id}"):
        verify_backup(FleetContext(cfg), "app")
    monkeypatch.setenv(KEY_ENV, right)
    assert latest_reports(FleetContext(cfg).store, FleetContext(cfg).read_keys, "app") == {}


def test_table_missing_from_dump(backed_up):
    # The manifest records what the source had; a dump that lacks one of its tables is simulated
    # by a manifest that names one more table than the dump holds.
    cfg, manifest = backed_up
    tamper_manifest(cfg, manifest, lambda m: m["table_rows"].update({"public.invoices": 42}))
    report = verify_backup(FleetContext(cfg), "app")
    assert not report.passed
    assert [f.message for f in report.findings if f.kind == "missing_table"] == [
        "table public.invoices is missing from the restored copy"]


def test_row_count_difference(backed_up):
    cfg, manifest = backed_up
    tamper_manifest(cfg, manifest, lambda m: m["table_rows"].update({"public.users": 5}))
    report = verify_backup(FleetContext(cfg), "app")
    [f] = report.findings
    assert (f.kind, f.object, f.expected, f.actual) == ("row_count", "public.users", 5, manifest.table_rows["public.users"])


def test_dropped_rls_policy_and_rls_flag(backed_up):
    # The source had a policy (and forced RLS) that the restored copy lacks.
    cfg, manifest = backed_up

    def source_had_more(m):
        m["schema_fingerprint"]["policies"]["public.vendors.vendor_isolation"] = "PERMISSIVE public ALL using(true) check()"
        m["schema_fingerprint"]["tables"]["public.vendors"] = "r rls forced"

    tamper_manifest(cfg, manifest, source_had_more)
    report = verify_backup(FleetContext(cfg), "app")
    messages = [f.message for f in report.findings]
    assert not report.passed
    assert "RLS policy public.vendors.vendor_isolation is missing from the restored copy" in messages
    assert "table public.vendors differs: expected 'r rls forced', got 'r'" in messages


def test_failing_and_broken_sanity_queries(write_config, sample_app):
    checks = [{"name": "impossible", "sql": "SELECT count(*) FROM users", "expect": "> 1000000"},
              {"name": "broken", "sql": "SELECT nope FROM users", "expect": True}]
    cfg = load_config(write_config({"app": {"dsn": sample_app["dsn"], "verification": {"sanity_checks": checks}}}))
    fleet.backup_target(FleetContext(cfg), "app")
    report = verify_backup(FleetContext(cfg), "app")
    assert not report.passed
    by_name = {s["name"]: s for s in report.sanity}
    assert by_name["impossible"]["value"] == sample_app["counts"]["public.users"] and not by_name["impossible"]["passed"]
    assert "column \"nope\" does not exist" in by_name["broken"]["error"]
    assert len([f for f in report.findings if f.kind == "sanity"]) == 2


def test_stale_scratch_databases_are_swept_and_cancellation_drops_scratch(backed_up, pg_cluster):
    cfg, _ = backed_up
    pg_cluster.execute("CREATE DATABASE dbops_verify_app_20200101000000")  # left by a crashed run (earlier name format)
    pg_cluster.execute("CREATE DATABASE dbops_verify_app_20200101000000_0a1b2c")  # the same, current format
    pg_cluster.execute("CREATE DATABASE dbops_verify_other_20200101000000")  # another target's: not ours
    pg_cluster.execute("CREATE DATABASE dbops_verify_app_x_20200101000000_0a1b2c")  # target app_x's: not app's either
    try:
        logs: list[str] = []

        def cancel_mid_way(msg: str) -> None:
            logs.append(msg)
            if msg.startswith("restored in"):
                raise KeyboardInterrupt  # what a terminated run raises in the step

        with pytest.raises(KeyboardInterrupt):
            verify_backup(FleetContext(cfg), "app", log=cancel_mid_way)
        assert "dropped stale scratch database dbops_verify_app_20200101000000 left by an earlier run" in logs
        assert "dropped stale scratch database dbops_verify_app_20200101000000_0a1b2c left by an earlier run" in logs
        assert sorted(scratch_databases(pg_cluster)) == ["dbops_verify_app_x_20200101000000_0a1b2c", "dbops_verify_other_20200101000000"]
        assert latest_reports(FleetContext(cfg).store, FleetContext(cfg).read_keys, "app") == {}  # nothing concluded, nothing recorded
    finally:
        pg_cluster.drop_database("dbops_verify_other_20200101000000")
        pg_cluster.drop_database("dbops_verify_app_x_20200101000000_0a1b2c")


def test_verification_on_a_separate_server(backed_up, tmp_path, sample_app, write_config, pg_cluster):
    from dbops_pipelines.localdev.pgcluster import LocalCluster

    staging = LocalCluster(tmp_path / "staging")
    staging.start()
    # A production role the staging server does not have: its GRANTs must not break verification.
    pg_cluster.execute("DO $$ BEGIN CREATE ROLE prod_only_role; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    pg_cluster.execute("GRANT SELECT ON public.vendors TO prod_only_role", dbname="app")
    fleet.backup_target(FleetContext(load_config(write_config({"app": sample_app["dsn"]}))), "app")
    try:
        cfg = load_config(write_config({"app": {"dsn": sample_app["dsn"], "verification": {"server_dsn": staging.dsn()}}}))
        logs: list[str] = []
        report = verify_backup(FleetContext(cfg), "app", log=logs.append)
        assert report.passed and report.server == f"127.0.0.1:{staging.port}"
        assert (report.server_role, report.server_notice) == ("staging", None)
        assert not [m for m in logs if "WARNING" in m or "production server" in m], logs
        assert "note:" not in report.summary()
    finally:
        staging.stop()
        pg_cluster.execute("REVOKE SELECT ON public.vendors FROM prod_only_role", dbname="app")
