"""The database and statements sections of a stats snapshot: on a real cluster (rates across
transactions and resets, slow statements, a missing or unloaded pg_stat_statements) and, without
I/O, their rate and finding logic on hand-made dicts."""

from __future__ import annotations

import inspect
import json
import math
import re
import time
import uuid
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from dbops_pipelines.config import parse_config
from dbops_pipelines.localdev.pgcluster import LocalCluster
from dbops_pipelines.stats.model import Snapshot
from dbops_pipelines.stats.sections import database, statements
from dbops_pipelines.stats.snapshot import judge, take_snapshot

SECTIONS = [database.SECTION, statements.SECTION]
HOSTILE_ROLE = 'Evil "role" ü.x'


def config(dsn: str, top_n: int = 20, **thresholds):
    return parse_config({"targets": {"app": {"dsn": dsn, "stats": {"top_n": top_n, "thresholds": thresholds}}}})


def snapshot(dsn: str, previous: Snapshot | None = None, **thresholds) -> Snapshot:
    snap = take_snapshot(config(dsn, **thresholds), "app", previous=previous, sections=SECTIONS)
    assert snap.errors == {}
    return snap


def run_statements(dsn: str, statement: str, times: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(times):
            conn.execute(statement)


def wait_for_counter(pg_cluster, db: str, at_least: int, counter: str = "xact_commit") -> None:
    """A backend publishes its counters when it goes idle (at most once a second) or exits: wait
    until they show, so the next snapshot sees them."""
    query = sql.SQL("SELECT {} FROM pg_stat_database WHERE datname = %s").format(sql.Identifier(counter))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        (value,), = pg_cluster.execute(query, params=(db,))
        if value >= at_least:
            return
        time.sleep(0.1)
    raise AssertionError(f"pg_stat_database never showed {counter} >= {at_least} in {db}")


def negative_numbers(value) -> list:
    """Negative or infinite rates anywhere in a rates dict (queryids are signed: not rates)."""
    if isinstance(value, dict):
        return [n for k, v in value.items() if k != "queryid" for n in negative_numbers(v)]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value] if value < 0 or not math.isfinite(value) else []
    return []


def codes(snap: Snapshot, code: str) -> list:
    return [f for f in snap.findings if f.code == code]


@pytest.fixture(scope="module")
def stats_db(pg_cluster):
    """A database with pg_stat_statements, and a hostile role that runs statements and, as a member
    of pg_monitor only, the snapshots that must not need more."""
    name = f"stats_{uuid.uuid4().hex[:10]}"
    pg_cluster.create_database(name)
    pg_cluster.execute("CREATE EXTENSION pg_stat_statements", dbname=name)
    pg_cluster.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE pg_monitor").format(sql.Identifier(HOSTILE_ROLE)))
    yield name
    pg_cluster.drop_database(name, force=True)
    pg_cluster.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(HOSTILE_ROLE)))


@pytest.fixture(scope="module")
def unloaded_cluster(tmp_path_factory):
    """A cluster whose server does not load pg_stat_statements (postgresql.auto.conf is read last)."""
    cluster = LocalCluster(tmp_path_factory.mktemp("pg-unloaded"))
    cluster.init()
    with open(cluster.data_dir / "postgresql.auto.conf", "a") as conf:
        conf.write("\nshared_preload_libraries = ''\n")
    cluster.start()
    yield cluster
    cluster.stop()


# --- on the cluster -----------------------------------------------------------------------------

def test_snapshot_sections_are_json_with_the_documented_samples(pg_cluster, stats_db):
    run_statements(pg_cluster.dsn(stats_db), "SELECT 1", 1)    # a statement of another role, superuser
    snap = snapshot(make_conninfo(pg_cluster.dsn(stats_db), user=HOSTILE_ROLE))   # pg_monitor is enough
    json.dumps(snap.to_dict())
    db = snap.sections["database"]
    assert db["database"] == stats_db and db["size_bytes"] > 1_000_000 and db["xact_commit"] > 0
    assert db["checkpoints"]["source"] == "pg_stat_bgwriter" and db["postmaster_start"].endswith("+00:00")
    st = snap.sections["statements"]
    # dealloc: how often the shared cluster's view was full so far (the whole suite fills it), never negative
    assert st["available"] is True and st["max"] == 5000 and st["info"]["dealloc"] >= 0
    assert 0 < st["totals"]["entries"] <= st["entries_server"]
    assert st["top"] and all(set(s["rankings"]) <= {"total_time", "mean_time", "calls"} for s in st["top"])
    assert len(st["top"]) <= 3 * 20 and all(len(s["query"]) <= 300 for s in st["top"])
    assert {"postgres", '"Evil ""role"" ü.x"'} <= {s["role"] for s in st["top"]}
    assert not [s for s in st["top"] if "insufficient privilege" in s["query"]]
    kinds = {s.name: s.kind for s in snap.samples}
    for name in ("xact_commit_total", "xact_rollback_total", "blocks_read_total", "blocks_hit_total",
                 "deadlocks_total", "temp_bytes_total", "conflicts_total", "statements_dealloc_total"):
        assert kinds[name] == "counter"
    for name in ("database_size_bytes", "cache_hit_ratio", "backends", "statements_entries", "statements_max"):
        assert kinds[name] == "gauge"
    assert not {"commits_per_second", "statements_calls_per_second"} & set(kinds)   # no previous snapshot
    assert all(s.name.endswith("_total") for s in snap.samples if s.kind == "counter")
    assert snap.sample("statements_max") == 5000


def test_slow_statement_is_found_once_per_queryid_with_the_slowest_role(pg_cluster, stats_db):
    run_statements(pg_cluster.dsn(stats_db), "SELECT pg_sleep(0.06)", 2)
    run_statements(make_conninfo(pg_cluster.dsn(stats_db), user=HOSTILE_ROLE), "SELECT pg_sleep(0.12)", 2)
    (queryid,), = pg_cluster.execute(
        "SELECT DISTINCT queryid FROM pg_stat_statements WHERE query = 'SELECT pg_sleep($1)' "
        "AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())", dbname=stats_db)
    dsn = pg_cluster.dsn(stats_db)

    warned = codes(snapshot(dsn, slow_statement_warning_ms=50, slow_statement_min_calls=2), "slow_statement")
    ours = [f for f in warned if f.object == f"queryid {queryid}"]
    assert len(ours) == 1 and ours[0].severity == "warning"
    assert "SELECT pg_sleep($1)" in ours[0].message and '"Evil ""role"" ü.x"' in ours[0].message
    assert "EXPLAIN (ANALYZE, BUFFERS)" in ours[0].recommendation

    critical = codes(snapshot(dsn, slow_statement_warning_ms=50, slow_statement_critical_ms=100), "slow_statement")
    assert [f.severity for f in critical if f.object == f"queryid {queryid}"] == ["critical"]
    for quiet in ({"slow_statement_warning_ms": 5000}, {"slow_statement_warning_ms": 50, "slow_statement_min_calls": 3}):
        assert not [f for f in codes(snapshot(dsn, **quiet), "slow_statement") if f.object == f"queryid {queryid}"]


def test_missing_extension_is_a_finding_and_the_other_section_is_still_collected(pg_cluster):
    name = 'We"ird db ü.x'
    pg_cluster.create_database(name)
    try:
        snap = snapshot(make_conninfo(pg_cluster.dsn(), dbname=name))
    finally:
        pg_cluster.drop_database(name, force=True)
    assert snap.sections["database"]["database"] == '"We""ird db ü.x"'
    assert snap.sections["statements"]["available"] is False and snap.sample("statements_available") == 0
    (missing,) = codes(snap, "pg_stat_statements_missing")
    assert missing.severity == "warning" and missing.sql == "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"
    assert 'CREATE EXTENSION pg_stat_statements in database "We""ird db ü.x"' in missing.recommendation
    assert "shared_preload_libraries" not in missing.recommendation   # this server loads the library


def test_extension_without_the_library_loaded_is_a_finding_not_an_error(unloaded_cluster):
    unloaded_cluster.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    snap = snapshot(unloaded_cluster.dsn())
    assert snap.sections["database"]["xact_commit"] > 0
    data = snap.sections["statements"]
    assert data["available"] is False and data["installed"] is True and data["loaded"] is False
    (missing,) = codes(snap, "pg_stat_statements_missing")
    assert "shared_preload_libraries = 'pg_stat_statements'" in missing.recommendation
    assert "restart" in missing.recommendation and "CREATE EXTENSION" not in missing.recommendation


def test_pg_stat_statements_full_follows_the_ratio(pg_cluster, stats_db):
    dsn = pg_cluster.dsn(stats_db)
    (full,) = codes(snapshot(dsn, pg_stat_statements_full_ratio=0.0001), "pg_stat_statements_full")
    assert full.severity == "warning" and full.object == "pg_stat_statements.max"
    assert "of 5,000 entries" in full.message and full.sql == "ALTER SYSTEM SET pg_stat_statements.max = 10000"
    # The session cluster is shared by the whole suite, which may have filled much of the view:
    # judge against the entries actually there, just above them.
    data = snapshot(dsn).sections["statements"]
    entries, limit = data["entries_server"], data["max"]
    if entries + 50 < limit:       # room left: a ratio just above what is there does not fire
        assert not codes(snapshot(dsn, pg_stat_statements_full_ratio=(entries + 50) / limit), "pg_stat_statements_full")
    else:                          # the suite filled the view (evictions drop it by 5% at a time): it fires
        assert codes(snapshot(dsn, pg_stat_statements_full_ratio=entries * 0.5 / limit), "pg_stat_statements_full")


def test_commit_rate_counts_the_transactions_between_two_snapshots(pg_cluster, stats_db):
    dsn, transactions = pg_cluster.dsn(stats_db), 300
    first = snapshot(dsn)
    run_statements(dsn, "SELECT 1", transactions)
    wait_for_counter(pg_cluster, stats_db, first.sections["database"]["xact_commit"] + transactions)
    second = snapshot(dsn, previous=first)
    rate, seconds = second.rates["database"]["commits_per_second"], second.interval_seconds
    commits = second.sections["database"]["xact_commit"] - first.sections["database"]["xact_commit"]
    assert seconds > 0 and math.isfinite(rate) and rate == pytest.approx(commits / seconds)
    assert transactions <= commits <= transactions + 100   # plus the snapshots' and the waiting's own
    assert second.sample("commits_per_second") == pytest.approx(rate)
    assert second.rates["statements"]["calls_per_second"] >= transactions / seconds
    window = second.rates["statements"]["statements"]
    assert window and negative_numbers(second.rates) == []


def test_database_stats_reset_between_snapshots_gives_no_rate(pg_cluster, fresh_db):
    dsn = pg_cluster.dsn(fresh_db)
    first = snapshot(dsn)
    pg_cluster.execute("SELECT pg_stat_reset()", dbname=fresh_db)
    # More commits after the reset than before it: only the reset marker can tell.
    more = first.sections["database"]["xact_commit"] + 50
    run_statements(dsn, "SELECT 1", more)
    wait_for_counter(pg_cluster, fresh_db, more)
    second = snapshot(dsn, previous=first)
    assert first.sections["database"]["stats_reset"] is None and second.sections["database"]["stats_reset"]
    assert second.sections["database"]["xact_commit"] > first.sections["database"]["xact_commit"]
    rates = second.rates["database"]
    assert rates["commits_per_second"] is None and rates["blocks_hit_per_second"] is None
    assert rates["window_cache_hit_ratio"] is None and negative_numbers(rates) == []
    assert second.sample("commits_per_second") is None
    assert second.sample("cache_hit_ratio") == pytest.approx(second.sections["database"]["cache_hit_ratio"])


def test_statements_reset_between_snapshots_gives_no_statement_rates(pg_cluster, stats_db):
    dsn = pg_cluster.dsn(stats_db)
    first = snapshot(dsn)
    pg_cluster.execute("SELECT pg_stat_statements_reset()", dbname=stats_db)   # the test may; the product never does
    run_statements(dsn, "SELECT 1", 20)
    second = snapshot(dsn, previous=first)
    rates = second.rates["statements"]
    assert rates["reset"] is True and rates["calls_per_second"] is None and rates["exec_ms_per_second"] is None
    assert rates["statements"], "the snapshot's own statements are in both top lists"
    assert all(w["calls_per_second"] is None and w["mean_exec_ms"] is None for w in rates["statements"].values())
    assert negative_numbers(rates) == [] and second.sample("statements_calls_per_second") is None


def test_cache_hit_low_follows_the_thresholds(pg_cluster, fresh_db):
    dsn = pg_cluster.dsn(fresh_db)
    # A table over a quarter of shared_buffers is scanned through a small ring of buffers: it is
    # read from outside shared_buffers every time, whatever else the cluster has cached.
    pg_cluster.execute("CREATE TABLE big AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 200000) g",
                       dbname=fresh_db)
    run_statements(dsn, "SELECT count(*) FROM big", 1)
    wait_for_counter(pg_cluster, fresh_db, 1000, "blks_read")
    snap = snapshot(dsn, cache_hit_low_ratio=1.0, cache_hit_min_blocks=0)
    (low,) = codes(snap, "cache_hit_low")
    assert low.severity == "warning" and low.object == "" and "shared_buffers is 128.0 MB" in low.message
    assert not codes(snapshot(dsn, cache_hit_low_ratio=0.01, cache_hit_min_blocks=0), "cache_hit_low")
    assert not codes(snapshot(dsn, cache_hit_low_ratio=1.0, cache_hit_min_blocks=10**12), "cache_hit_low")


def test_product_code_never_resets_statistics():
    for module in (statements, database):
        source = inspect.getsource(module)
        assert "pg_stat_statements_reset" not in source
        assert not re.search(r"pg_stat\w*_reset\w*\s*\(", source)


# --- pure logic ---------------------------------------------------------------------------------

THRESHOLDS = config("postgresql://x@127.0.0.1/x").stats_for("app").thresholds
T0 = "2026-01-01T00:00:00+00:00"


def db_data(**over) -> dict:
    data = {"database": "app", "datid": 1, "size_bytes": 10 << 20, "shared_buffers_bytes": 128 << 20, "backends": 3,
            **{key: 0 for key in database.COUNTERS}, "stats_reset": None, "postmaster_start": T0,
            "checkpoints": {"source": "pg_stat_bgwriter", "timed": 1, "requested": 0, "buffers_written": 10,
                            "stats_reset": T0},
            "bgwriter": {"buffers_clean": 0, "buffers_backend": 0, "stats_reset": T0}}
    data.update(over)
    data["cache_hit_ratio"] = database.hit_ratio(data["blks_hit"], data["blks_read"])
    return data


def test_database_rates_are_per_second_and_unknown_across_any_reset():
    prev = db_data(xact_commit=100, blks_read=10, blks_hit=90, deadlocks=1)
    cur = db_data(xact_commit=700, blks_read=20, blks_hit=1090, deadlocks=3)
    rates = database.rates(prev, cur, 60.0)
    assert rates["commits_per_second"] == 10.0 and rates["deadlocks_in_window"] == 2
    assert rates["window_blocks"] == 1010 and rates["window_cache_hit_ratio"] == pytest.approx(1000 / 1010)
    assert database.rates(None, cur, 60.0) == {}
    for changed in ({"stats_reset": "2026-01-02T00:00:00+00:00"}, {"postmaster_start": "2026-01-02T00:00:00+00:00"},
                    {"datid": 2}):
        after = database.rates(prev, {**cur, **changed}, 60.0)
        assert after["commits_per_second"] is None and after["window_cache_hit_ratio"] is None
    backwards = database.rates(prev, db_data(xact_commit=50, blks_read=20, blks_hit=1090), 60.0)
    assert backwards["commits_per_second"] is None and backwards["blocks_hit_per_second"] == pytest.approx(1000 / 60)
    restarted = database.rates(prev, {**cur, "postmaster_start": "2026-01-02T00:00:00+00:00"}, 60.0)
    assert restarted["checkpoints_timed_in_window"] is None


def test_checkpoint_source_follows_the_server_version():
    assert "pg_stat_checkpointer" in database.checkpoints_query(170000)
    assert "checkpoints_timed" in database.checkpoints_query(160004)
    assert "pg_stat_checkpointer" not in database.checkpoints_query(130000)


def test_cache_hit_low_judges_the_window_when_there_is_one():
    th = THRESHOLDS.model_copy(update={"cache_hit_low_ratio": 0.9, "cache_hit_min_blocks": 100})
    healthy_history = db_data(blks_read=1005, blks_hit=100_000)
    bad_window = database.rates(db_data(blks_read=5, blks_hit=99_000), healthy_history, 300.0)
    (low,) = database.findings("app", healthy_history, bad_window, th)
    assert "over the last 300 s" in low.message and "1,000 blocks read" in low.message and "50.0%" in low.message
    bad_history = db_data(blks_read=50_000, blks_hit=50_000)
    good_window = database.rates(db_data(blks_read=50_000, blks_hit=40_000), bad_history, 300.0)
    assert database.findings("app", bad_history, good_window, th) == []
    small_window = database.rates(db_data(blks_read=49_990, blks_hit=49_990), bad_history, 300.0)
    assert small_window["window_blocks"] == 20 and database.findings("app", bad_history, small_window, th) == []
    assert [f.code for f in database.findings("app", bad_history, {}, th)] == ["cache_hit_low"]   # no previous
    after_reset = database.rates(db_data(blks_read=1, blks_hit=1), {**bad_history, "stats_reset": T0}, 300.0)
    assert after_reset["window_blocks"] is None
    assert [f.code for f in database.findings("app", {**bad_history, "stats_reset": T0}, after_reset, th)] == ["cache_hit_low"]


def test_database_samples_carry_rates_only_when_known():
    prev, cur = db_data(xact_commit=100), db_data(xact_commit=160, blks_read=1, blks_hit=3)
    names = {s.name for s in database.samples(cur, database.rates(prev, cur, 60.0))}
    assert {"commits_per_second", "rollbacks_per_second", "blocks_read_per_second", "cache_hit_ratio"} <= names
    reset = database.rates(prev, {**cur, "stats_reset": T0}, 60.0)
    samples = {s.name: s.value for s in database.samples(cur, reset)}
    assert "commits_per_second" not in samples and samples["cache_hit_ratio"] == 0.75


def statement(queryid: int, calls: int, total_ms: float, userid: int = 10, rank: int = 1, **over) -> dict:
    return {"queryid": queryid, "userid": userid, "role": "app", "calls": calls, "total_exec_ms": total_ms,
            "mean_exec_ms": total_ms / calls if calls else None, "max_exec_ms": total_ms, "rows": calls,
            "shared_blks_hit": 0, "shared_blks_read": 0, "temp_blks": 0, "query": f"SELECT {queryid}",
            "rankings": {"total_time": rank}, **over}


def stmt_data(top: list[dict], dealloc: int | None = 0, stats_reset: str = T0, entries: int = 100,
              limit: int = 5000) -> dict:
    return {"available": True, "database": "app", "dbid": 5, "extension_version": "1.10", "extension_schema": "public",
            "max": limit, "entries_server": entries,
            "totals": {"entries": len(top), "calls": sum(s["calls"] for s in top),
                       "total_exec_ms": sum(s["total_exec_ms"] for s in top), "rows": sum(s["rows"] for s in top)},
            "info": None if dealloc is None else {"dealloc": dealloc, "stats_reset": stats_reset},
            "top_n": 50, "slow_statement_min_calls": 1, "top": top}


def test_statement_rates_survive_evictions_elsewhere_but_not_their_own():
    prev = stmt_data([statement(1, 100, 1000.0), statement(2, 100, 100.0, rank=2)], dealloc=3)
    evicted_and_back = statement(2, 4, 4.0, rank=2)     # counters went backwards
    cur = stmt_data([statement(1, 160, 7000.0), evicted_and_back], dealloc=4)
    rates = statements.rates(prev, cur, 60.0)
    assert rates["dealloc_in_window"] == 1 and rates["calls_per_second"] is None and rates["exec_ms_per_second"] is None
    assert rates["statements"]["1/10"] == {"queryid": 1, "userid": 10, "calls_in_window": 60,
                                           "calls_per_second": 1.0, "mean_exec_ms": 100.0}
    assert rates["statements"]["2/10"]["calls_per_second"] is None and rates["statements"]["2/10"]["mean_exec_ms"] is None
    calm = statements.rates(prev, stmt_data(cur["top"], dealloc=3), 60.0)
    assert calm["reset"] is False and calm["calls_per_second"] is None   # totals went backwards with statement 2
    reset = statements.rates(prev, stmt_data(cur["top"], dealloc=0, stats_reset="2026-01-02T00:00:00+00:00"), 60.0)
    assert reset["reset"] is True and reset["statements"]["1/10"]["calls_per_second"] is None
    assert statements.rates(prev, stmt_data(cur["top"], dealloc=1), 60.0)["reset"] is True   # dealloc went backwards
    pg13 = statements.rates(stmt_data([statement(1, 100, 10.0)], dealloc=None),
                            stmt_data([statement(1, 130, 40.0)], dealloc=None), 30.0)
    assert pg13["calls_per_second"] == 1.0 and pg13["exec_ms_per_second"] == 1.0


def test_judge_keeps_an_evicted_statement_out_of_rates_and_findings():
    settings = config("postgresql://x@127.0.0.1/x", slow_statement_warning_ms=50).stats_for("app")
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    prev = Snapshot("app", start, 150004, 0.01, 0.1,
                    sections={"statements": stmt_data([statement(7, 1000, 10_000.0)], dealloc=0)})
    cur = Snapshot("app", start + timedelta(seconds=300), 150004, 0.01, 0.1,
                   sections={"statements": stmt_data([statement(7, 2, 20.0)], dealloc=5)})
    judge(cur, prev, [statements.SECTION], settings)
    assert cur.rates["statements"]["statements"]["7/10"]["mean_exec_ms"] is None
    assert negative_numbers(cur.rates) == [] and cur.sample("statements_calls_per_second") is None
    assert [f.code for f in cur.findings] == ["pg_stat_statements_full"]   # dealloc rose; 10 ms is not slow
    assert "evicted statements 5 times" in cur.findings[0].message
    assert cur.sample("statements_dealloc_total") == 5


def test_slow_statement_uses_the_window_mean_when_it_has_enough_calls():
    th = THRESHOLDS.model_copy(update={"slow_statement_warning_ms": 100, "slow_statement_critical_ms": 1000,
                                       "slow_statement_min_calls": 5})
    prev = stmt_data([statement(1, 1000, 10_000.0)])                 # 10 ms per call
    became_slow = stmt_data([statement(1, 1010, 30_000.0)])          # 10 calls at 2 s in the window
    (slow,) = statements.findings("app", became_slow, statements.rates(prev, became_slow, 300.0), th)
    assert slow.severity == "critical" and slow.object == "queryid 1" and "over 10 calls in the last 300 s" in slow.message
    few_calls = stmt_data([statement(1, 1002, 14_000.0)])            # 2 calls: too few, judged on all time
    assert statements.findings("app", few_calls, statements.rates(prev, few_calls, 300.0), th) == []
    history_only = stmt_data([statement(1, 10, 2_000.0)])
    (warned,) = statements.findings("app", history_only, {}, th)
    assert warned.severity == "warning" and "since pg_stat_statements began" in warned.message
    recovered = stmt_data([statement(1, 20, 2_010.0)])               # was 200 ms, 10 fast calls since
    assert statements.findings("app", recovered, statements.rates(history_only, recovered, 300.0), th) == []


def test_statement_samples_are_bounded_and_known_only():
    top = [statement(q, 10, 1000.0 - q, rank=q) for q in range(1, 16)]
    top.append(statement(1, 10, 500.0, userid=11, rank=16))          # same queryid, another role: added in
    data = stmt_data(top)
    samples = statements.samples(data, {})
    labelled = {s.labels for s in samples if s.name == "statement_calls_total"}
    assert len(labelled) == 10 and (("queryid", "1"),) in labelled
    assert next(s.value for s in samples if s.name == "statement_calls_total" and s.labels == (("queryid", "1"),)) == 20
    names = {s.name for s in samples}
    assert {"statements_entries", "statements_max", "statements_dealloc_total", "statement_mean_seconds_max"} <= names
    assert not {"statements_calls_per_second", "statements_exec_seconds_per_second"} & names
    assert next(s.value for s in samples if s.name == "statement_mean_seconds_max") == pytest.approx(0.0999)
    rated = statements.samples(data, statements.rates(stmt_data(top), data, 60.0))
    assert {"statements_calls_per_second", "statements_exec_seconds_per_second"} <= {s.name for s in rated}
    assert [s.name for s in statements.samples({"available": False, "reason": "x"}, {})] == ["statements_available"]


def test_missing_recommendation_names_each_step_needed():
    neither = statements.findings("app", {"available": False, "reason": "r", "database": '"A b"',
                                          "installed": False, "loaded": False}, {}, THRESHOLDS)[0]
    assert "shared_preload_libraries = 'pg_stat_statements'" in neither.recommendation
    assert 'CREATE EXTENSION pg_stat_statements in database "A b"' in neither.recommendation
    assert neither.code == "pg_stat_statements_missing" and neither.severity == "warning"
