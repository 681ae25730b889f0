"""`dbops stats`, `dbops stats history`, `dbops stats report` and `dbops exporter --once` against
a real cluster: what they print, where history goes, and every way they can fail."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
from psycopg import sql

from dbops_pipelines.cli import main

UNREACHABLE_METRICS = "postgresql://dbops@127.0.0.1:1/metrics"
FINDING_KEYS = {"code", "severity", "object", "message", "recommendation"}



def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_one_snapshot_without_history_prints_json_with_findings(write_config, sample_app, capsys):
    write_config({"app": sample_app["dsn"]})
    code, out, err = run(capsys, "stats", "app", "--json", "--no-save")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["kept"] is False and doc["target"] == "app" and doc["errors"] == {}
    assert set(doc["sections"]) == {"database", "statements", "activity", "tables", "health"}
    assert isinstance(doc["findings"], list)
    assert all(FINDING_KEYS <= set(f) for f in doc["findings"])

    code, out, err = run(capsys, "stats", "app")       # no metrics: section: printed, then told where history would go
    assert code == 1
    assert "snapshot took" in out and "not kept" in out
    assert "no metrics database is configured" in err and "metrics:" in err and "--no-save" in err


def test_history_report_and_exporter_over_kept_snapshots(write_config, sample_app, metrics_dsn, tmp_path, capsys):
    write_config({"app": sample_app["dsn"]}, metrics={"dsn": metrics_dsn})
    for _ in range(2):
        code, out, err = run(capsys, "stats", "app")
        assert code == 0, err
        assert "kept in the metrics database" in out
    code, out, err = run(capsys, "stats", "history", "app", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert len(rows) == 2 and all(r["client_connections"] >= 1 for r in rows)
    code, out, err = run(capsys, "stats", "history", "app", "--metric", "database_size_bytes", "--since", "1h")
    assert code == 0 and len(out.strip().splitlines()) == 2
    code, out, err = run(capsys, "stats", "history", "app", "--metric", "connections")   # labelled: every state
    assert code == 0 and "{state='active'}" in out and "{state='idle'}" in out
    code, out, err = run(capsys, "stats", "history", "app", "--metric", "no_such_metric")
    assert code == 1 and "no metric 'no_such_metric'" in err and "database_size_bytes" in err

    report = tmp_path / "app.html"
    code, out, err = run(capsys, "stats", "report", "app", "--from", "1h", "--out", str(report))
    assert code == 0, err
    assert report.read_text().startswith("<!DOCTYPE html>") and "<svg" in report.read_text()
    code, out, err = run(capsys, "stats", "report", "app", "--out", str(tmp_path / "missing" / "r.html"))
    assert code == 1 and "error:" in err and not (tmp_path / "missing").exists()

    code, out, err = run(capsys, "exporter", "--once")
    assert code == 0, err
    assert 'dbops_pg_client_connections{target="app"}' in out and "dbops_stats_exporter_up 1.0" in out


@pytest.mark.parametrize("argv, problem", [
    (["stats", "app", "--since", "6h"], "--since cannot be used"),
    (["stats", "report", "app"], "needs --out"),
    (["stats", "history", "app", "--since", "six hours"], "is not an age"),
    (["stats", "report", "app", "--from", "yesterday", "--out", "r.html"], "neither an ISO time nor an age"),
    (["stats", "app", "extra"], "unexpected 'extra'"),
    (["stats", "history"], "needs a TARGET"),
    (["stats", "history", "app", "--since", "0m"], "out of range"),
    (["stats", "history", "app", "--since", "99999999999d"], "out of range"),
    (["exporter", "--listen", "localhost"], "not host:port"),
])
def test_bad_usage_exits_2_before_anything_connects(write_config, capsys, argv, problem):
    write_config({"app": "postgresql://dbops@127.0.0.1:1/app"})
    code, out, err = run(capsys, *argv)
    assert code == 2 and problem in err and "Traceback" not in err


def test_unknown_target_and_unreachable_metrics_database_fail_loudly(write_config, sample_app, capsys):
    write_config({"app": sample_app["dsn"]}, metrics={"dsn": UNREACHABLE_METRICS})
    code, out, err = run(capsys, "stats", "nope")
    assert code == 1 and "unknown target 'nope'" in err
    code, out, err = run(capsys, "stats", "app")
    assert code == 1
    assert "NOT kept" in out and "snapshot took" in out          # the snapshot is shown, not lost silently
    assert "metrics database" in err and "Traceback" not in err
    code, out, err = run(capsys, "exporter", "--once")
    assert code == 1 and "dbops_stats_exporter_up 0.0" in out and "did not answer" in err


def test_a_pg_monitor_role_is_enough_for_every_section(pg_cluster, fresh_db, write_config, capsys):
    role = f"dbops_mon_{uuid.uuid4().hex[:6]}"
    pg_cluster.execute("CREATE EXTENSION pg_stat_statements", dbname=fresh_db)
    pg_cluster.execute("CREATE TABLE t (id int PRIMARY KEY, parent int REFERENCES t)", dbname=fresh_db)
    with psycopg.connect(pg_cluster.dsn("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT pg_monitor TO {}").format(sql.Identifier(role)))
    try:
        write_config({"app": {"dsn": pg_cluster.dsn(fresh_db), "roles": {"monitor": role}}})
        code, out, err = run(capsys, "stats", "app", "--json", "--no-save")
        assert code == 0, err
        doc = json.loads(out)
        assert doc["errors"] == {}                         # nothing needed superuser
        assert doc["sections"]["statements"]["available"] is True
        assert not [f for f in doc["findings"] if f["code"] == "snapshot_incomplete"]
        assert [f["object"] for f in doc["findings"] if f["code"] == "fk_without_index"] == ["public.t (parent)"]
    finally:
        with psycopg.connect(pg_cluster.dsn("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_role_without_pg_monitor_is_told_what_it_cannot_see(pg_cluster, fresh_db, write_config, capsys):
    role = f"NoMon_{uuid.uuid4().hex[:6]}"            # upper case: SQL must quote it
    pg_cluster.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        write_config({"app": {"dsn": pg_cluster.dsn(fresh_db), "roles": {"monitor": role}}})
        code, out, err = run(capsys, "stats", "app", "--json", "--no-save")
        assert code == 0, err
        [limited] = [f for f in json.loads(out)["findings"] if f["code"] == "monitor_role_limited"]
        assert limited["object"] == f'"{role}"' and limited["sql"] == f'GRANT pg_monitor TO "{role}"'
        pg_cluster.execute(limited["sql"])                # the SQL it gives runs, and the finding goes
        code, out, err = run(capsys, "stats", "app", "--json", "--no-save")
        assert not [f for f in json.loads(out)["findings"] if f["code"] == "monitor_role_limited"]
    finally:
        pg_cluster.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_one_targets_unexpected_error_costs_no_other_target_its_snapshot(pg_cluster, write_config, metrics_dsn,
                                                                          monkeypatch):
    """A bug met while judging one target (injected here) fails that target alone: the others are kept."""
    from dbops_pipelines.config import load_config
    from dbops_pipelines.stats import snapshot as snapshot_module
    from dbops_pipelines.stats.model import Section
    from dbops_pipelines.stats.service import open_store, snapshot_targets

    def collect(conn, env):
        return {"database": conn.info.dbname}

    def findings(target, data, rates, thresholds):
        if target == "b":
            raise TypeError("a bug in one section's judgement")
        return []

    buggy = Section("database", collect, lambda prev, cur, s: {}, lambda data, rates: [], findings)
    monkeypatch.setattr(snapshot_module, "all_sections", lambda: [buggy])
    path = write_config({name: pg_cluster.dsn("postgres") for name in ("a", "b", "c")}, metrics={"dsn": metrics_dsn})
    cfg = load_config(path)
    outcomes = {o.target: o for o in snapshot_targets(cfg, ["a", "b", "c"], save=True)}
    assert outcomes["a"].saved and outcomes["c"].saved and not outcomes["b"].saved
    assert "a bug in one section's judgement" in outcomes["b"].error.message
    with open_store(cfg, for_writing=False) as store:
        assert set(store.latest_all(["a", "b", "c"])) == {"a", "c"}
