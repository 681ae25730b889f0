"""End to end: webserver and daemon running, a backup run fails against an unreachable target,
and the alert reaches a local webhook receiver within one sensor interval."""

from __future__ import annotations

import time

import yaml

from dbops_pipelines.localdev.demo import start_dagster_dev, stop_dagster_dev
from dbops_pipelines.localdev.ports import free_port
from dbops_pipelines_tests.conftest import KEY_ENV
from dbops_pipelines_tests.dagster_ui import launch_job, wait_for, wait_for_run

SENSOR_INTERVAL = 5


def test_failed_backup_alerts_within_one_sensor_interval(tmp_path, pg_cluster, http_receiver, backup_key, monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "e2e-password-never-shown")
    port = free_port()
    config = tmp_path / "dbops.yaml"
    config.write_text(yaml.safe_dump({
        "storage": {"url": f"file://{tmp_path / 'store'}"},
        "encryption": {"key_env": KEY_ENV},
        "defaults": {"connect_retries": 0, "run_retries": 0},
        "alerts": {"ui_base_url": f"http://127.0.0.1:{port}", "sensor_interval_seconds": SENSOR_INTERVAL,
                   "sinks": [{"kind": "webhook", "url": http_receiver.url("/hook"), "min_severity": "warning"}]},
        "targets": {"app": {"dsn": "postgresql://dbops@127.0.0.1:1/app"}},
    }))
    proc = start_dagster_dev(config, tmp_path / "home", pg_cluster, port)
    try:
        run_id = launch_job(f"http://127.0.0.1:{port}", "backup_app")
        assert wait_for_run(f"http://127.0.0.1:{port}", run_id) == "FAILURE"
        failed_at = time.monotonic()

        def run_alert():
            return [r.body for r in http_receiver.received("/hook") if r.body["alert"]["run_id"] == run_id]
        [hook] = wait_for(run_alert, SENSOR_INTERVAL * 2 + 15, "the run-failure alert")
        delay = time.monotonic() - failed_at
        alert = hook["alert"]
        assert alert["condition"] == "run_failed" and alert["target"] == "app"
        assert alert["run_url"] == f"http://127.0.0.1:{port}/runs/{run_id}"
        assert "cannot connect to app" in alert["error_excerpt"]
        assert "e2e-password-never-shown" not in str([r.body for r in http_receiver.requests])
        print(f"alert arrived {delay:.1f} s after the run failed (sensor interval {SENSOR_INTERVAL} s)")
        assert delay <= SENSOR_INTERVAL + 15  # one interval, plus the daemon's own loop and start-up slack
    finally:
        stop_dagster_dev(proc)
