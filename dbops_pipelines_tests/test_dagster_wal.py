"""Base backups, archive health and PITR in Dagster (docs/pitr.md#in-dagster).

The definitions of a target with a `wal` section; a base backup materialized against a real
cluster with its metadata; the archive_health check on a server that does not archive (failed,
wal_archiving_off, alerting as check_failed) and on one it cannot reach (failed, the run not);
the thresholds of the health logic without I/O; launchpad mistakes of the PITR job failing before
anything is done; and, on a server archiving through `dbops wal-push`, a healthy check and a
point-in-time recovery launched as the `pitr_app` job."""

from __future__ import annotations

import base64
import json
import os
import pwd
import subprocess
import sys
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pytest
import yaml

from dbops_pipelines.config import WalSettings, load_config
from dbops_pipelines.context import FleetContext
from dbops_pipelines.defs import names
from dbops_pipelines.defs.alerts import alert_scope, evaluate_alerts
from dbops_pipelines.defs.spec import discover_features
from dbops_pipelines.defs.wal import HEALTH_JOB, base_backup_max_age
from dbops_pipelines.definitions import build_definitions
from dbops_pipelines.localdev.pgcluster import PG_OS_USER, LocalCluster
from dbops_pipelines.localdev.ports import free_port
from dbops_pipelines.wal.basebackup import list_base_backups
from dbops_pipelines.wal.health import ArchiveFacts, archive_health, judge, unarchived_bytes
from dbops_pipelines.wal.naming import parse_lsn

UNREACHABLE = "postgresql://dbops@127.0.0.1:1/app"
KEY = names.asset_key("app", names.BASE_BACKUP)
CHECK = dg.AssetCheckKey(KEY, names.ARCHIVE_HEALTH)
AS_ROOT = os.geteuid() == 0
MB16 = 16 << 20


def _evaluation(result, key=CHECK):
    [evaluation] = [e for e in result.get_asset_check_evaluations() if e.asset_check_key == key]
    return evaluation


def _failure(result) -> str:
    [event] = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    return event.step_failure_data.user_failure_data.description


# --- definitions -------------------------------------------------------------------------------

def test_definitions_of_a_target_with_a_wal_section(write_config):
    path = write_config({"app": {"dsn": UNREACHABLE, "cluster": "main", "wal": {"schedule": "0 3 * * *"}},
                         "plain": UNREACHABLE}, clusters={"main": {"pool_limit": 1}})
    defs = build_definitions(path)
    dg.Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    graph = repo.asset_graph
    wal_assets = sorted(k.to_user_string() for k in graph.get_all_asset_keys() if k.path[-1] == names.BASE_BACKUP)
    assert wal_assets == ["app/base_backup"]                         # only the target with a wal section
    assert CHECK in graph.asset_check_keys
    jobs = {j.name for j in repo.get_all_jobs()}
    assert {"base_backup_app", "pitr_app", HEALTH_JOB} <= jobs and "base_backup_plain" not in jobs
    schedules = {s.name: s for s in repo.schedule_defs}
    assert schedules["base_backup_app_schedule"].cron_schedule == "0 3 * * *"
    assert schedules[f"{HEALTH_JOB}_schedule"].cron_schedule == "*/5 * * * *"
    assert all(schedules[n].default_status == dg.DefaultScheduleStatus.RUNNING
               for n in ("base_backup_app_schedule", f"{HEALTH_JOB}_schedule"))
    asset = defs.resolve_assets_def(KEY)
    assert asset.op.pool == "pg_server_main" and graph.get(KEY).group_name == "app"
    assert graph.get(KEY).kinds == {"postgres", "file"}
    assert asset.specs_by_key[KEY].tags[names.FEATURE_TAG] == names.BASE_BACKUP
    assert asset.specs_by_key[KEY].freshness_policy is not None
    # The base backup job runs the health check after the backup; the health job runs checks only, in one process.
    backup_job = defs.resolve_job_def("base_backup_app")
    assert backup_job.tags[names.TARGET_TAG] == "app" and backup_job.tags[names.FEATURE_TAG] == names.BASE_BACKUP
    assert CHECK in backup_job.asset_layer.asset_graph.asset_check_keys
    health_job = defs.resolve_job_def(HEALTH_JOB)
    assert health_job.executor_def is dg.in_process_executor
    # PITR runs are launched by hand and never alert: no feature tag.
    pitr_job = defs.resolve_job_def("pitr_app")
    assert pitr_job.tags[names.TARGET_TAG] == "app" and names.FEATURE_TAG not in pitr_job.tags
    # The alert sensor sees the check and the asset's feature without being told.
    scope = alert_scope(defs)
    assert CHECK in scope.check_keys and scope.feature_of[KEY] == names.BASE_BACKUP
    assert {s.name for s in discover_features()} >= {names.BASE_BACKUP}


def test_base_backup_age_follows_the_schedule():
    assert base_backup_max_age(WalSettings()) == timedelta(days=8)                      # weekly + a day
    assert base_backup_max_age(WalSettings(schedule="0 2 * * *")) == timedelta(days=2)
    assert base_backup_max_age(WalSettings(schedule="0 */6 * * *")) == timedelta(hours=12)
    assert base_backup_max_age(WalSettings(schedule="0 2 1,15 * *")) == timedelta(days=8)   # shape not judged


# --- against the session cluster (archive_mode off) --------------------------------------------

def test_base_backup_materializes_and_health_fails_without_archiving(write_config, pg_cluster, fresh_db, monkeypatch):
    path = write_config({"app": {"dsn": pg_cluster.dsn(fresh_db), "wal": {}}})
    defs = build_definitions(path)
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("base_backup_app").execute_in_process(instance=instance)
        assert result.success                      # a failed check does not fail the run
        meta = instance.get_latest_materialization_event(KEY).asset_materialization.metadata
        evaluation = _evaluation(result)
        # The alert sensor: the failed check alerts; a base backup exists, so base_backup_stale does not.
        cursor = evaluate_alerts(dg.build_sensor_context(instance=instance), load_config(path), alert_scope(defs),
                                 discover_features()).cursor
    assert meta["stored_bytes"].value > 0 and meta["raw_bytes"].value > meta["stored_bytes"].value
    assert isinstance(meta["stored_bytes"], dg.IntMetadataValue) and isinstance(meta["duration_seconds"], dg.FloatMetadataValue)
    assert meta["duration_seconds"].value > 0
    assert parse_lsn(meta["start_lsn"].value) <= parse_lsn(meta["stop_lsn"].value)
    [entry] = list_base_backups(FleetContext(load_config(path)), load_config(path).server_of("app"))
    assert entry.valid and entry.backup_id == meta["backup_id"].value and entry.manifest.stop_lsn == meta["stop_lsn"].value

    assert evaluation.passed is False and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert "wal_archiving_off" in evaluation.metadata["codes"].value
    assert "archive_mode is off" in evaluation.description
    opened = json.loads(cursor)["open"]
    assert "app/check_failed/archive_health" in opened and "app/base_backup_stale" not in opened

    # Without a wal section the same server is only information, never critical.
    path = write_config({"app": {"dsn": pg_cluster.dsn(fresh_db)}})
    [finding] = archive_health(FleetContext(load_config(path)), "app")
    assert (finding.code, finding.severity) == ("wal_archiving_off", "info")


def test_an_unreachable_server_fails_the_check_not_the_run(write_config):
    path = write_config({"app": {"dsn": UNREACHABLE, "wal": {}}})
    with dg.instance_for_test() as instance:
        result = build_definitions(path).resolve_job_def(HEALTH_JOB).execute_in_process(instance=instance)
    assert result.success
    evaluation = _evaluation(result)
    assert evaluation.passed is False and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert evaluation.description.startswith("cannot judge the archive's health: cannot connect to target app")


def test_pitr_launchpad_mistakes_are_clear_failures(write_config, tmp_path):
    path = write_config({"app": {"dsn": UNREACHABLE, "wal": {}}})
    job = build_definitions(path).resolve_job_def("pitr_app")
    into = tmp_path / "copy"
    cases = [
        ({"into": str(into), "port": 5999, "to": "2026-11-24T14:05:00Z", "latest": True}, "name exactly one recovery target"),
        ({"into": str(into), "port": 5999}, "name exactly one recovery target"),
        ({"into": str(into), "port": 5999, "to": "yesterday"}, "is not an ISO 8601 time"),
        ({"into": str(into), "port": 5999, "latest": True, "action": "resume"}, "unknown --action 'resume'"),
        ({"into": "relative/copy", "port": 5999, "latest": True}, "into must be an absolute path"),
    ]
    with dg.instance_for_test() as instance:
        for config, message in cases:
            result = job.execute_in_process(instance=instance, raise_on_error=False,
                                            run_config={"ops": {"app__pitr": {"config": config}}})
            assert not result.success
            assert message in _failure(result), config
    assert not into.exists()


# --- the thresholds, without I/O ---------------------------------------------------------------

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def facts(**changes) -> ArchiveFacts:
    healthy = ArchiveFacts(
        server_now=NOW, in_recovery=False, archive_mode="on",
        archive_command="/opt/dbops/.venv/bin/python -m dbops_pipelines.cli_wal wal-push %p --target app",
        archive_library="", wal_lsn="0/6000100", segment_size=MB16, archived_count=5,
        last_archived_wal="000000010000000000000005", last_archived_at=NOW - timedelta(minutes=2),
        failed_count=0, last_failed_wal=None, last_failed_at=None, stats_reset=NOW - timedelta(days=3),
        ready_files=0, pg_wal_bytes=10 * MB16, pg_wal_files=10, role="dbops_monitor")
    return replace(healthy, **changes)


def codes(f: ArchiveFacts, settings: WalSettings | None = None, required: bool = True) -> dict[str, str]:
    return {x.code: x.severity for x in judge("app", f, settings or WalSettings(), required)}


def test_health_thresholds():
    assert codes(facts()) == {}
    assert unarchived_bytes(facts()) == 0x100                  # segment 5 ends at 0/6000000
    # Archiving off, not through dbops, or with nothing to run.
    assert codes(facts(archive_mode="off")) == {"wal_archiving_off": "critical"}
    assert codes(facts(archive_mode="off"), required=False) == {"wal_archiving_off": "info"}
    assert codes(facts(archive_command="cp %p /mnt/archive/%f")) == {"wal_archiving_off": "critical"}
    assert codes(facts(archive_command="")) == {"wal_archiving_off": "critical"}
    assert codes(facts(archive_library="basic_archive")) == {"wal_archiving_off": "critical"}
    assert codes(facts(in_recovery=True)) == {"wal_archiving_off": "info"}     # a standby: the primary archives
    # Failing: only when the latest attempt failed.
    failing = facts(failed_count=3, last_failed_wal="000000010000000000000006", last_failed_at=NOW - timedelta(seconds=30))
    assert codes(failing) == {"wal_archive_failing": "critical"}
    assert codes(replace(failing, last_failed_at=NOW - timedelta(minutes=5))) == {}      # succeeded since
    # Stale: only while WAL is written after the last archived segment.
    old = facts(last_archived_at=NOW - timedelta(minutes=20))
    assert codes(old) == {"wal_archive_stale": "warning"}
    assert codes(replace(old, wal_lsn="0/6000000")) == {}                    # idle: nothing to archive
    assert codes(replace(old, last_archived_at=NOW - timedelta(minutes=61))) == {"wal_archive_stale": "critical"}
    assert codes(old, WalSettings(max_archive_age_minutes=30)) == {}
    assert codes(facts(last_archived_wal="000000010000000000000005.00000028.backup",
                       last_archived_at=NOW - timedelta(minutes=20))) == {"wal_archive_stale": "warning"}
    assert codes(facts(last_archived_wal=None, last_archived_at=None, archived_count=0)) == {"wal_archive_stale": "critical"}
    # The .ready backlog and pg_wal's size: warning above the threshold, critical at 4 times it.
    assert codes(facts(ready_files=32)) == {}
    assert codes(facts(ready_files=33)) == {"wal_ready_backlog": "warning"}
    assert codes(facts(ready_files=129)) == {"wal_ready_backlog": "critical"}
    assert codes(facts(pg_wal_bytes=2 << 30), WalSettings(max_pg_wal_bytes=1 << 30)) == {"pg_wal_large": "warning"}
    assert codes(facts(pg_wal_bytes=5 << 30), WalSettings(max_pg_wal_bytes=1 << 30)) == {"pg_wal_large": "critical"}
    # What the role may not read is said, not guessed.
    limited = judge("app", facts(ready_files=None, pg_wal_bytes=None, pg_wal_files=None, limited={
        "pg_ls_waldir()": "permission denied for function pg_ls_waldir",
        "pg_ls_archive_statusdir()": "permission denied for function pg_ls_archive_statusdir"}), WalSettings())
    assert {(f.code, f.object, f.severity) for f in limited} == {
        ("wal_health_limited", "pg_ls_waldir()", "warning"), ("wal_health_limited", "pg_ls_archive_statusdir()", "warning")}
    assert all(f.sql == "GRANT pg_monitor TO dbops_monitor" for f in limited)
    # Worst first; every finding says what to do.
    many = judge("app", replace(failing, ready_files=40, last_archived_at=NOW - timedelta(minutes=20)), WalSettings())
    assert [f.severity for f in many][0] == "critical" and all(f.recommendation and f.section == "wal" for f in many)


def test_a_role_without_pg_monitor_gets_a_limited_finding(write_config, pg_cluster, fresh_db):
    role = f"mon_{fresh_db[-8:]}"
    pg_cluster.execute(f"CREATE ROLE {role} LOGIN")
    try:
        path = write_config({"app": {"dsn": pg_cluster.dsn(fresh_db), "roles": {"monitor": role}, "wal": {}}})
        found = {(f.code, f.object) for f in archive_health(FleetContext(load_config(path)), "app")}
    finally:
        pg_cluster.execute(f"DROP ROLE {role}")
    assert ("wal_health_limited", "pg_ls_waldir()") in found and ("wal_health_limited", "pg_ls_archive_statusdir()") in found
    assert ("wal_archiving_off", "archive_mode") in found


# --- a server archiving through dbops wal-push ---------------------------------------------------

KEY_ENV = "DBOPS_TEST_WAL_DAGSTER_KEY"


def _for_server(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    if AS_ROOT:
        pg = pwd.getpwnam(PG_OS_USER)
        os.chown(path, pg.pw_uid, pg.pw_gid)
    return path


@pytest.fixture(scope="module")
def archiving(tmp_path_factory):
    """A cluster whose archive_command is dbops wal-push into a local store, the definitions of its
    dbops.yaml, and a Dagster instance holding one base backup and rows written after it."""
    base = tmp_path_factory.mktemp("walda")
    key = base64.b64encode(os.urandom(32)).decode()
    store, spool = _for_server(base / "store"), _for_server(base / "server-tmp")
    conf = base / "conf"
    conf.mkdir(mode=0o755)
    cluster = LocalCluster(base / "pg")
    config_path = conf / "dbops.yaml"
    config_path.write_text(yaml.safe_dump({
        "storage": {"url": f"file://{store}"}, "encryption": {"key_env": KEY_ENV},
        "defaults": {"connect_retries": 1, "backup": {"run_retries": 0}},
        "targets": {"app": {"dsn": cluster.dsn("app"), "wal": {"prefetch": 4}}}}))
    os.chmod(config_path, 0o644)
    cluster.extra_conf = "\n".join([
        "archive_mode = on",
        f"archive_command = '{sys.executable} -m dbops_pipelines.cli_wal wal-push %p --target app'"])
    cluster.env = {"DBOPS_CONFIG": str(config_path), KEY_ENV: key, "TMPDIR": str(spool)}
    cluster.start()

    def switch_and_wait(timeout: float = 60) -> None:
        last = cluster.execute("SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0]
        cluster.execute("SELECT pg_switch_wal()")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            archived = cluster.execute("SELECT last_archived_wal FROM pg_stat_archiver")[0][0]
            if archived and archived >= last:
                return
            time.sleep(0.2)
        pytest.fail(f"{last} not archived: {cluster.log_file.read_text()[-2000:]}")

    try:
        cluster.create_database("app")
        with pytest.MonkeyPatch.context() as mp, dg.instance_for_test() as instance:
            mp.setenv(KEY_ENV, key)
            mp.setenv("DBOPS_CONFIG", str(config_path))
            mp.setenv("TMPDIR", str(_for_server(base / "fetch-tmp")))      # the recovered server's spool
            cluster.execute("CREATE TABLE events (id int PRIMARY KEY, tag text)", "app")
            switch_and_wait()       # the server writes the archive's folders first (it runs as postgres)
            defs = build_definitions(config_path)
            backup_run = defs.resolve_job_def("base_backup_app").execute_in_process(instance=instance)
            cluster.execute("INSERT INTO events SELECT g, 'after' FROM generate_series(1, 50) g", "app")
            switch_and_wait()
            yield {"base": base, "cluster": cluster, "defs": defs, "instance": instance, "backup_run": backup_run}
    finally:
        cluster.stop()


def test_health_passes_on_a_server_archiving_through_dbops(archiving):
    evaluation = _evaluation(archiving["backup_run"])
    assert archiving["backup_run"].success and evaluation.passed, evaluation.description
    # Right after a base backup its segment and .backup file may still wait their turn: a few, not a backlog.
    assert evaluation.metadata["codes"].value == [] and 0 <= evaluation.metadata["ready_files"].value <= 32
    assert evaluation.metadata["pg_wal_bytes"].value > 0 and evaluation.metadata["failed_count"].value == 0
    later = archiving["defs"].resolve_job_def(HEALTH_JOB).execute_in_process(instance=archiving["instance"])
    assert later.success and _evaluation(later).passed


def test_pitr_job_recovers_and_records_the_point_reached(archiving):
    instance, cluster = archiving["instance"], archiving["cluster"]
    into, port = archiving["base"] / f"copy-{time.monotonic_ns()}", free_port()
    meta = instance.get_latest_materialization_event(KEY).asset_materialization.metadata
    result = archiving["defs"].resolve_job_def("pitr_app").execute_in_process(
        instance=instance, raise_on_error=False,
        run_config={"ops": {"app__pitr": {"config": {"into": str(into), "port": port, "latest": True,
                                                     "timeout_seconds": 120}}}})
    try:
        assert result.success, _failure(result)
        [output] = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_OUTPUT]
        recorded = output.event_specific_data.metadata
        assert recorded["state"].value == "promoted" and recorded["base_backup"].value == meta["backup_id"].value
        assert parse_lsn(recorded["reached_lsn"].value) > parse_lsn(meta["stop_lsn"].value)
        assert recorded["rto_seconds"].value > 0
        copy = LocalCluster(archiving["base"] / "unused", port=port)
        assert copy.execute("SELECT count(*) FROM events", dbname="app") == [(50,)]
        assert cluster.execute("SELECT count(*) FROM events", dbname="app") == [(50,)]   # production untouched
    finally:
        cmd = ["/usr/lib/postgresql/15/bin/pg_ctl", "stop", "-m", "fast", "-D", str(into)]
        subprocess.run(["runuser", "-u", PG_OS_USER, "--", *cmd] if AS_ROOT else cmd, capture_output=True)
