"""The Prometheus exporter (stats/exporter.py): metrics built from the latest stored snapshots in a
real metrics database, checked with prometheus-client's parser and promtool, served over HTTP."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dbops_pipelines.config import parse_config
from dbops_pipelines.errors import ConfigError
from dbops_pipelines.findings import Finding
from dbops_pipelines.localdev.ports import free_port
from dbops_pipelines.stats.exporter import LatestSnapshotsCollector, build_families, parse_listen, render, serve
from dbops_pipelines.stats.history import MetricsStore
from dbops_pipelines.stats.model import Sample, Snapshot
from dbops_pipelines_tests.conftest import scratch_database

HOSTILE_TABLE = 'public."We""ird ta\\ble"\nçà 表 {x="1"}'
TAKEN = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=2)


def snapshot(target: str, taken_at: datetime, commits: float, table_labels: tuple) -> Snapshot:
    return Snapshot(
        target=target, taken_at=taken_at, server_version_num=150004, connect_seconds=0.01, duration_seconds=0.3,
        samples=[
            Sample("connections", 4, (("state", "active"),), help="Sessions by state"),
            Sample("connections", 9, (("state", "idle"),), help="Sessions by state"),
            Sample("xact_commit_total", commits, kind="counter", help="Transactions committed"),
            Sample("database_size_bytes", 7.5e6, help="Size of the database"),
            Sample("cache_hit_ratio", 0.995, help="Blocks found in shared buffers"),
            Sample("table_size_bytes", 16384, table_labels, help="Size of the largest tables"),
            Sample("snapshot_duration_seconds", 0.3, help="How long the stats snapshot took"),
        ],
        findings=[
            Finding("dead_tuples", "warning", target, HOSTILE_TABLE, "many dead tuples", "VACUUM"),
            Finding("dead_tuples", "warning", target, "public.b", "many dead tuples", "VACUUM"),
            Finding("long_running_query", "critical", target, "pid 1", "long", "look"),
        ],
    )


@pytest.fixture(scope="module")
def metrics_dsn(pg_cluster):
    with scratch_database(pg_cluster, "metrics") as name:
        yield pg_cluster.dsn(name)


@pytest.fixture(scope="module")
def raw_config(pg_cluster, metrics_dsn) -> dict:
    target = {"dsn": pg_cluster.dsn("postgres")}
    return {"metrics": {"dsn": metrics_dsn},
            "targets": {"app": target, "shop": target, "idle": target, "off": {**target, "stats": {"enabled": False}}}}


@pytest.fixture(scope="module")
def cfg(raw_config):
    cfg = parse_config(raw_config)
    with MetricsStore.open(cfg.metrics, retries=0) as store:
        store.ensure_schema(TAKEN)
        store.save(snapshot("app", TAKEN - timedelta(minutes=5), 100, (("relation", HOSTILE_TABLE),)))
        store.save(snapshot("app", TAKEN, 1500, (("relation", HOSTILE_TABLE),)))
        store.save(snapshot("shop", TAKEN, 42, (("relation", "public.t"), ("schema_owner", "bob"))))
        store.save(snapshot("off", TAKEN, 1, ()))
    return cfg


def families(text: bytes) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text.decode())}


def values(family) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}


def test_render_exports_the_latest_snapshot_of_each_target(cfg):
    before = datetime.now(timezone.utc)
    got = families(render(cfg))
    after = datetime.now(timezone.utc)
    assert values(got["dbops_stats_exporter_up"]) == {("dbops_stats_exporter_up", ()): 1.0}

    commits = got["dbops_pg_xact_commit"]
    assert commits.type == "counter" and commits.documentation == "Transactions committed"
    assert values(commits) == {("dbops_pg_xact_commit_total", (("target", "app"),)): 1500.0,   # the latest one
                               ("dbops_pg_xact_commit_total", (("target", "shop"),)): 42.0}
    assert got["dbops_pg_connections"].type == "gauge"
    assert values(got["dbops_pg_connections"])[("dbops_pg_connections", (("state", "idle"), ("target", "app")))] == 9.0
    # one label set per name: the union, "" where a target's sample lacks the label; hostile text survives
    assert values(got["dbops_pg_table_size_bytes"]) == {
        ("dbops_pg_table_size_bytes", (("relation", HOSTILE_TABLE), ("schema_owner", ""), ("target", "app"))): 16384.0,
        ("dbops_pg_table_size_bytes", (("relation", "public.t"), ("schema_owner", "bob"), ("target", "shop"))): 16384.0,
    }
    assert values(got["dbops_pg_findings"]) == {
        ("dbops_pg_findings", (("code", c), ("severity", s), ("target", t))): n
        for t in ("app", "shop") for c, s, n in (("dead_tuples", "warning", 2.0), ("long_running_query", "critical", 1.0))}
    stamps = values(got["dbops_pg_snapshot_timestamp_seconds"])
    assert stamps == {("dbops_pg_snapshot_timestamp_seconds", (("target", t),)): TAKEN.timestamp() for t in ("app", "shop")}
    ages = values(got["dbops_pg_snapshot_age_seconds"])
    # The age at render time: TAKEN is fixed when the module loads, long before this test may run.
    low, high = (before - TAKEN).total_seconds() - 1, (after - TAKEN).total_seconds() + 1
    assert all(low <= age <= high for age in ages.values()) and len(ages) == 2
    # "idle" has no snapshot, "off" has stats disabled: neither appears
    assert not any(dict(labels).get("target") in ("idle", "off") for f in got.values() for _, labels in values(f))


def test_promtool_accepts_the_output_without_lint_problems(cfg):
    text = render(cfg)
    result = subprocess.run(["/usr/bin/promtool", "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == b"" and result.stderr.strip() == b""


def test_promtool_would_catch_a_badly_named_sample(cfg):
    """The lint check above means something: an abbreviated unit is reported."""
    bad = build_families({"app": Snapshot("app", TAKEN, 150004, 0.0, 0.0, samples=[Sample("latency_ms", 1, help="x")])}, 0)
    class Fixed:
        def collect(self):
            return bad

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())
    result = subprocess.run(["/usr/bin/promtool", "check", "metrics"], input=generate_latest(registry),
                            capture_output=True, timeout=60)
    assert result.returncode != 0 and b"abbreviated units" in result.stdout + result.stderr


def test_a_burst_of_scrapes_costs_one_query(cfg):
    collector = LatestSnapshotsCollector(cfg.metrics, ["app"], cache_seconds=60)
    first = {f.name: f for f in collector.collect()}
    newer = TAKEN + timedelta(seconds=30)
    with MetricsStore.open(cfg.metrics, retries=0) as store:
        store.save(snapshot("app", newer, 1600, ()))
    cached = {f.name: f for f in collector.collect()}
    fresh = {f.name: f for f in LatestSnapshotsCollector(cfg.metrics, ["app"], cache_seconds=0).collect()}
    stamp = "dbops_pg_snapshot_timestamp_seconds"
    assert first[stamp].samples[0].value == cached[stamp].samples[0].value == TAKEN.timestamp()
    assert fresh[stamp].samples[0].value == newer.timestamp()
    with MetricsStore.open(cfg.metrics, retries=0) as store:   # back to the module's state for other tests
        store.conn.execute("DELETE FROM dbops_metrics.snapshot WHERE target = 'app' AND taken_at = %s", (newer,))


def test_the_metrics_database_down_still_answers_with_up_zero(raw_config, caplog):
    down = parse_config({**raw_config, "metrics": {"dsn": f"postgresql://postgres@127.0.0.1:{free_port()}/metrics"}})
    with caplog.at_level(logging.WARNING, logger="dbops_pipelines.stats.exporter"):
        got = families(render(down))
    assert values(got["dbops_stats_exporter_up"]) == {("dbops_stats_exporter_up", ()): 0.0}
    assert all(not f.samples for name, f in got.items() if name.startswith("dbops_pg_"))
    assert any("did not answer" in r.getMessage() and "cannot connect" in r.getMessage() for r in caplog.records)


def test_serve_answers_metrics_over_http_and_stops_on_interrupt(raw_config, cfg, tmp_path):
    config_path = tmp_path / "dbops.yaml"
    config_path.write_text(yaml.safe_dump(raw_config))
    port = free_port()
    code = ("import sys; from dbops_pipelines.config import load_config; from dbops_pipelines.stats.exporter import serve; "
            f"serve(load_config({str(config_path)!r}), '127.0.0.1:{port}'); print('stopped cleanly')")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=os.getcwd())
    try:
        deadline, response = time.monotonic() + 20, None
        while response is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                response = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
            except OSError:
                time.sleep(0.1)
        assert response is not None, proc.stderr.read() if proc.poll() is not None else "no answer"
        body = response.read()
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        assert b"dbops_stats_exporter_up 1.0" in body and b'dbops_pg_xact_commit_total{target="shop"} 42.0' in body
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0 and b"stopped cleanly" in out and b"Traceback" not in err


def test_serve_on_an_address_in_use_is_a_clear_config_error(cfg):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        with pytest.raises(ConfigError) as caught:
            serve(cfg, address)
    assert address in caught.value.message and "already in use" in caught.value.message
    assert "--listen" in caught.value.hint


@pytest.mark.parametrize("listen", ["127.0.0.1", "::1:9187", "host:0", "host:70000", "[::1]9187", ""])
def test_a_bad_listen_address_is_a_config_error(listen):
    with pytest.raises(ConfigError, match="is not host:port"):
        parse_listen(listen)


def test_listen_addresses_parse():
    assert parse_listen("127.0.0.1:9187") == ("127.0.0.1", 9187)
    assert parse_listen("[::1]:9187") == ("::1", 9187)
    assert parse_listen(":9187") == ("0.0.0.0", 9187)


def test_no_metrics_section_is_a_config_error(pg_cluster):
    with pytest.raises(ConfigError, match="no metrics: section"):
        render(parse_config({"targets": {"app": {"dsn": pg_cluster.dsn("postgres")}}}))


def test_build_families_keeps_one_kind_and_valid_names():
    snaps = {
        "a": Snapshot("a", TAKEN, 150004, 0.0, 0.0, samples=[
            Sample("events", 3, kind="counter"),                         # a counter without _total
            Sample("mixed", 1), Sample("bad-name", 1), Sample("x", 1, (("target", "inner"),)),
            Sample("dup", 1), Sample("dup", 2)]),
        "b": Snapshot("b", TAKEN, 150004, 0.0, 0.0, samples=[Sample("mixed_total", 5, kind="counter"),
                                                             Sample("mixed", 2, kind="counter")]),
    }
    got = {f.name: f for f in build_families(snaps, TAKEN.timestamp())}
    assert got["dbops_pg_events"].type == "counter" and got["dbops_pg_events"].samples[0].name == "dbops_pg_events_total"
    assert got["dbops_pg_events"].documentation == "events from the latest stats snapshot"
    assert got["dbops_pg_mixed"].type == "gauge" and [s.value for s in got["dbops_pg_mixed"].samples] == [1.0]
    assert "dbops_pg_bad-name" not in got
    assert got["dbops_pg_x"].samples[0].labels == {"target": "a", "exported_target": "inner"}
    assert [s.value for s in got["dbops_pg_dup"].samples] == [1.0]
