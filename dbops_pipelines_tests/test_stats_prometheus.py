"""A real Prometheus server (Debian's 2.42) scrapes `dbops exporter` and reads back the numbers of
the stored snapshot: the exposition is not only well-formed text but what Prometheus ingests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
import yaml

from dbops_pipelines.config import load_config
from dbops_pipelines.localdev.ports import free_ports
from dbops_pipelines.stats.service import snapshot_targets

PROMETHEUS = "/usr/bin/prometheus"
DBOPS = os.path.join(os.path.dirname(sys.executable), "dbops")
UP_TIMEOUT_SECONDS = 30



@pytest.fixture
def target_dsn(pg_cluster, fresh_db):
    pg_cluster.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", dbname=fresh_db)
    return pg_cluster.dsn(fresh_db)


def start_in_own_group(argv: list[str], log_path, env: dict | None = None) -> subprocess.Popen:
    # Its own process group, so teardown signals everything it started and nothing of ours.
    with open(log_path, "wb") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def stop_group(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def api(base: str, path: str, **params) -> dict:
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]


def instant(base: str, query: str) -> list[dict]:
    return api(base, "/api/v1/query", query=query)["result"]


def wait_until_scraped_up(base: str, procs: dict[str, subprocess.Popen], logs: dict) -> None:
    deadline = time.monotonic() + UP_TIMEOUT_SECONDS
    last = None
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            assert proc.poll() is None, f"{name} exited ({proc.returncode}):\n{logs[name].read_text(errors='replace')[-3000:]}"
        try:
            last = instant(base, 'up{job="dbops"}')
            if last and last[0]["value"][1] == "1":
                return
        except OSError as exc:      # Prometheus not listening yet
            last = exc
        time.sleep(0.25)
    raise AssertionError(f"Prometheus never saw the exporter up within {UP_TIMEOUT_SECONDS} s: {last}\n"
                         f"{logs['prometheus'].read_text(errors='replace')[-3000:]}")


def test_a_real_prometheus_scrapes_the_stored_snapshot(write_config, metrics_dsn, target_dsn, tmp_path):
    config_path = write_config({"app": {"dsn": target_dsn}}, metrics={"dsn": metrics_dsn})
    [outcome] = snapshot_targets(load_config(config_path), ["app"], save=True)
    assert outcome.saved and outcome.error is None, outcome.error
    snap = outcome.snapshot
    assert snap.errors == {}
    connections = snap.sample("client_connections")
    assert connections is not None and connections >= 1      # at least the snapshot's own session

    exporter_port, prometheus_port = free_ports(2)
    exporter_address = f"127.0.0.1:{exporter_port}"
    prom_config = tmp_path / "prometheus.yml"
    prom_config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "dbops", "scrape_interval": "1s", "scrape_timeout": "1s",
                            "static_configs": [{"targets": [exporter_address]}]}],
    }))
    logs = {"exporter": tmp_path / "exporter.log", "prometheus": tmp_path / "prometheus.log"}
    procs: dict[str, subprocess.Popen] = {}
    try:
        procs["exporter"] = start_in_own_group(
            [DBOPS, "exporter", "--listen", exporter_address], logs["exporter"],
            env={**os.environ, "DBOPS_CONFIG": str(config_path)})
        procs["prometheus"] = start_in_own_group(
            [PROMETHEUS, f"--config.file={prom_config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prometheus_port}"], logs["prometheus"])
        base = f"http://127.0.0.1:{prometheus_port}"
        wait_until_scraped_up(base, procs, logs)

        [conn] = instant(base, 'dbops_pg_client_connections{target="app"}')
        assert conn["metric"]["job"] == "dbops" and conn["metric"]["instance"] == exporter_address
        assert float(conn["value"][1]) == connections
        [stamp] = instant(base, 'dbops_pg_snapshot_timestamp_seconds{target="app"}')
        assert float(stamp["value"][1]) == pytest.approx(snap.taken_at.timestamp(), abs=1e-3)
        [exporter_up] = instant(base, "dbops_stats_exporter_up")
        assert exporter_up["value"][1] == "1"       # the exporter read the metrics database

        [target] = [t for t in api(base, "/api/v1/targets")["activeTargets"] if t["labels"]["job"] == "dbops"]
        assert target["scrapeUrl"] == f"http://{exporter_address}/metrics"
        assert target["health"] == "up" and target["lastError"] == "", target
    finally:
        for proc in reversed(list(procs.values())):
            stop_group(proc)
