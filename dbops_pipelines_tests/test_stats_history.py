"""The stats history (stats/history.py) against a real metrics database on the throwaway cluster:
round trips, duplicates, daily partitions, retention by DROP, and the database being down."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest

from dbops_pipelines.config import MetricsSettings
from dbops_pipelines.errors import MetricsStoreError, StatsFailed
from dbops_pipelines.findings import Finding
from dbops_pipelines.localdev.ports import free_port
from dbops_pipelines.stats.history import MetricsStore, _json_safe, partition_name
from dbops_pipelines.stats.model import Sample, Snapshot
from dbops_pipelines_tests.conftest import scratch_database

HOSTILE_TABLE = 'public."We""ird ta\\ble; DROP TABLE x;--"\nçà 表'
HOSTILE_TARGET = "o'brien \"app\" ☃"
NOW = datetime.now(timezone.utc).replace(microsecond=0)


def make_snapshot(target: str, taken_at: datetime, connections: float = 7, commits: float = 1000,
                  queries: dict[int, str] | None = None) -> Snapshot:
    queries = {101: "SELECT * FROM orders WHERE id = $1", 202: "UPDATE \"Weird\" SET x = $1"} if queries is None else queries
    # the shape of stats/sections/statements.py
    top = [{"queryid": qid, "userid": 10, "query": text, "calls": 10 * i + 1, "total_exec_ms": 12.5 * i,
            "mean_exec_ms": 1.25, "max_exec_ms": 9.5, "rows": 3, "shared_blks_hit": 100, "shared_blks_read": 4,
            "temp_blks": 3} for i, (qid, text) in enumerate(queries.items(), start=1)]
    top.append({"query": "an item without a queryid is skipped"})
    return Snapshot(
        target=target, taken_at=taken_at, server_version_num=150004, connect_seconds=0.01, duration_seconds=0.2,
        sections={"database": {"numbackends": int(connections), "ratio": float("nan")}, "statements": {"top": top}},
        rates={"statements": {"statements": {f"{next(iter(queries), 0)}/10": {
            "queryid": next(iter(queries), 0), "userid": 10, "calls_per_second": 2.5, "mean_exec_ms": 0.75}}}},
        samples=[
            Sample("connections", connections, help="Sessions"),
            Sample("connections_by_state", connections - 2, (("state", "active"),), help="Sessions by state"),
            Sample("connections_by_state", 2, (("state", "idle"),), help="Sessions by state"),
            Sample("xact_commit_total", commits, kind="counter", help="Commits"),
            Sample("table_size_bytes", 8192, (("relation", HOSTILE_TABLE),), help="Table size"),
            Sample("not_a_number", float("nan"), help="dropped: NaN is no measurement"),
        ],
        findings=[
            Finding("dead_tuples", "warning", target, HOSTILE_TABLE, "12000 dead tuples (14%)", "Run VACUUM",
                    f"VACUUM (ANALYZE) {HOSTILE_TABLE}"),
            Finding("long_running_query", "critical", target, "pid 4242", "running for 120 s", "Look at it"),
        ],
        interval_seconds=300.0,
    )


@pytest.fixture(scope="module")
def metrics_db(pg_cluster):
    with scratch_database(pg_cluster, "metrics") as name:
        yield name


@pytest.fixture(scope="module")
def settings(pg_cluster, metrics_db) -> MetricsSettings:
    return MetricsSettings(dsn=pg_cluster.dsn(metrics_db), retention_days=30)


@pytest.fixture(scope="module")
def store(settings):
    with MetricsStore.open(settings, retries=0) as store:
        store.ensure_schema(NOW)
        yield store


def partitions(pg_cluster, db: str, schema: str, parent: str) -> set[str]:
    rows = pg_cluster.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent "
        "JOIN pg_namespace n ON n.oid = p.relnamespace WHERE n.nspname = %s AND p.relname = %s",
        dbname=db, params=(schema, parent))
    return {r[0] for r in rows}


def test_a_snapshot_round_trips_with_samples_statements_and_findings(store, pg_cluster, metrics_db):
    target = f"roundtrip {HOSTILE_TARGET}"
    first, second = make_snapshot(target, NOW - timedelta(minutes=5), 5, 1000), make_snapshot(target, NOW, 7, 1600)
    store.save(first)
    store.save(second)

    latest = store.latest(target)
    assert latest.taken_at == NOW and latest.taken_at.tzinfo is not None and latest.taken_at.utcoffset() == timedelta(0)
    assert latest.target == target and latest.interval_seconds == 300.0
    assert latest.sample("connections") == 7 and latest.sample("table_size_bytes", relation=HOSTILE_TABLE) == 8192
    assert latest.sample("not_a_number") is None            # non-finite values are not stored
    assert latest.sections["database"] == {"numbackends": 7, "ratio": None}
    assert {f.object for f in latest.findings} == {HOSTILE_TABLE, "pid 4242"}
    assert store.previous(target, NOW).taken_at == NOW - timedelta(minutes=5)
    assert store.previous(target, NOW - timedelta(minutes=5)) is None
    assert store.last_taken_at(target) == NOW

    assert store.series(target, "connections", NOW - timedelta(hours=1)) == [(NOW - timedelta(minutes=5), 5.0), (NOW, 7.0)]
    assert store.series(target, "connections_by_state", NOW - timedelta(hours=1), labels={"state": "idle"}) == \
        [(NOW - timedelta(minutes=5), 2.0), (NOW, 2.0)]
    assert store.series(target, "connections", NOW - timedelta(hours=1), until=NOW - timedelta(minutes=1)) == \
        [(NOW - timedelta(minutes=5), 5.0)]
    assert store.series(target, "table_size_bytes", NOW - timedelta(hours=1), labels={"relation": HOSTILE_TABLE})[-1] == (NOW, 8192.0)
    assert store.metrics(target) == ["connections", "connections_by_state", "table_size_bytes", "xact_commit_total"]

    found = store.findings_at(target, NOW)
    assert [f.code for f in found] == ["long_running_query", "dead_tuples"]      # worst first
    assert found[1] == second.findings[0] and found[1].sql == f"VACUUM (ANALYZE) {HOSTILE_TABLE}"

    rows = pg_cluster.execute(
        "SELECT queryid, userid, calls, total_ms, mean_ms, temp_blks, calls_per_second, mean_ms_window "
        "FROM dbops_metrics.statement WHERE target = %s AND taken_at = %s ORDER BY queryid",
        dbname=metrics_db, params=(target, NOW))
    assert rows == [(101, 10, 11, 12.5, 1.25, 3, 2.5, 0.75), (202, 10, 21, 25.0, 1.25, 3, None, None)]
    texts = pg_cluster.execute("SELECT queryid, query, last_seen FROM dbops_metrics.statement_text WHERE target = %s "
                               "ORDER BY queryid", dbname=metrics_db, params=(target,))
    assert [(q, t) for q, t, _ in texts] == [(101, "SELECT * FROM orders WHERE id = $1"), (202, 'UPDATE "Weird" SET x = $1')]
    assert all(seen == NOW for _, _, seen in texts)
    # stored once: the document leaves findings and query texts to their tables, reads put them back
    [(doc,)] = pg_cluster.execute("SELECT doc FROM dbops_metrics.snapshot WHERE target = %s AND taken_at = %s",
                                  dbname=metrics_db, params=(target, NOW))
    assert doc["findings"] == [] and not any("query" in item for item in doc["sections"]["statements"]["top"] if "queryid" in item)
    assert doc["samples"] == [] and "statements" not in doc["rates"]["statements"]
    assert {s.name: s.help for s in latest.samples}["connections_by_state"] == "Sessions by state"
    assert sorted(s.to_dict()["labels"].get("state", "") for s in latest.samples if s.name == "connections_by_state") == [
        "active", "idle"]
    assert {item["queryid"]: item["query"] for item in latest.sections["statements"]["top"] if "queryid" in item} == {
        101: "SELECT * FROM orders WHERE id = $1", 202: 'UPDATE "Weird" SET x = $1'}
    assert second.findings and all("query" in item for item in second.sections["statements"]["top"])  # not mutated


def test_reads_between_snapshots_and_for_several_targets(store):
    times = [NOW - timedelta(minutes=m) for m in (30, 20, 10)]
    for t in times:
        store.save(make_snapshot("between", t))
    store.save(make_snapshot("other", NOW - timedelta(minutes=15), connections=3))
    assert store.snapshots_between("between", times[0], times[1]) == times[:2]
    assert store.snapshots_between("between", NOW - timedelta(hours=1), NOW, limit=2) == times[:2]
    assert store.snapshot_at_or_after("between", times[0] + timedelta(seconds=1)).taken_at == times[1]
    assert store.snapshot_at_or_before("between", times[2] - timedelta(seconds=1)).taken_at == times[1]
    assert store.snapshot_at_or_after("between", NOW) is None
    latest = store.latest_all(["between", "other", "never-seen"])
    assert sorted(latest) == ["between", "other"]
    assert latest["between"].taken_at == times[2] and latest["other"].sample("connections") == 3
    assert store.latest("never-seen") is None and store.last_taken_at("never-seen") is None


def test_saving_the_same_snapshot_twice_is_refused_and_the_first_kept(store, pg_cluster, metrics_db):
    store.save(make_snapshot("dup", NOW, connections=5))
    with pytest.raises(StatsFailed) as caught:
        store.save(make_snapshot("dup", NOW, connections=99))
    assert "'dup'" in caught.value.message and NOW.isoformat() in caught.value.message
    assert "already stored" in caught.value.message
    assert store.latest("dup").sample("connections") == 5
    (count,) = pg_cluster.execute("SELECT count(*) FROM dbops_metrics.sample WHERE target = 'dup'", dbname=metrics_db)[0]
    assert count == 5           # the first snapshot's five finite samples, none of the second's


def test_a_write_failing_midway_leaves_nothing_half_saved(store, pg_cluster, metrics_db):
    snap = make_snapshot("halfway", NOW)
    snap.sections["statements"]["top"][0]["calls"] = 2 ** 70        # beyond bigint: the statement insert fails
    with pytest.raises(MetricsStoreError) as caught:
        store.save(snap)
    assert "out of range" in caught.value.message
    for table in ("snapshot", "sample", "statement", "finding", "statement_text"):
        rows = pg_cluster.execute(f"SELECT count(*) FROM dbops_metrics.{table} WHERE target = 'halfway'", dbname=metrics_db)
        assert rows == [(0,)], table
    store.save(make_snapshot("halfway", NOW))                      # the connection is still usable
    assert store.latest("halfway").taken_at == NOW


def test_partitions_exist_for_today_and_the_next_two_days(store, pg_cluster, metrics_db):
    days = [(NOW + timedelta(days=n)).date() for n in range(3)]
    for table in ("snapshot", "sample", "statement", "finding"):
        assert {partition_name(table, d) for d in days} <= partitions(pg_cluster, metrics_db, "dbops_metrics", table)
    (default_parts,) = pg_cluster.execute(
        "SELECT count(*) FROM pg_partitioned_table WHERE partdefid <> 0", dbname=metrics_db)[0]
    assert default_parts == 0
    (kind,) = pg_cluster.execute("SELECT relkind FROM pg_class WHERE oid = 'dbops_metrics.statement_text'::regclass",
                                 dbname=metrics_db)[0]
    assert kind == "r"           # the dictionary of texts is an ordinary table


def test_save_creates_the_partition_of_a_day_not_prepared(store, pg_cluster, metrics_db):
    later = NOW + timedelta(days=10)
    name = partition_name("sample", later.date())
    assert name not in partitions(pg_cluster, metrics_db, "dbops_metrics", "sample")
    store.save(make_snapshot("clock_jump", later))
    assert name in partitions(pg_cluster, metrics_db, "dbops_metrics", "sample")
    assert store.latest("clock_jump").taken_at == later


def test_retention_drops_whole_old_partitions_and_old_texts(pg_cluster, metrics_db):
    settings = MetricsSettings(dsn=pg_cluster.dsn(metrics_db), retention_days=30, schema_name="retention_check")
    kept_at = NOW + timedelta(days=35)
    with MetricsStore.open(settings, retries=0) as store:
        store.ensure_schema(NOW)
        store.save(make_snapshot("app", NOW, queries={1: "SELECT old"}))
        store.save(make_snapshot("app", kept_at, queries={2: "SELECT new"}))
        dropped = store.apply_retention(NOW + timedelta(days=40))

        old_days = [(NOW + timedelta(days=n)).date() for n in range(3)]
        assert sorted(dropped) == sorted(f"retention_check.{partition_name(t, d)}"
                                         for t in ("snapshot", "sample", "statement", "finding") for d in old_days)
        remaining = partitions(pg_cluster, metrics_db, "retention_check", "sample")
        assert not remaining & {partition_name("sample", d) for d in old_days}
        assert pg_cluster.execute("SELECT to_regclass(%s)", dbname=metrics_db,
                                  params=(f"retention_check.{partition_name('snapshot', old_days[0])}",)) == [(None,)]
        ahead = {partition_name("sample", (NOW + timedelta(days=40 + n)).date()) for n in range(3)}
        assert {partition_name("sample", kept_at.date()), *ahead} <= remaining
        assert store.latest("app").taken_at == kept_at and store.previous("app", kept_at) is None
        texts = pg_cluster.execute("SELECT queryid FROM retention_check.statement_text", dbname=metrics_db)
        assert texts == [(2,)]
        assert store.apply_retention(NOW + timedelta(days=40)) == []


def test_two_processes_creating_the_schema_at_once_both_succeed(pg_cluster, metrics_db):
    settings = MetricsSettings(dsn=pg_cluster.dsn(metrics_db), schema_name="concurrent_check")
    errors: list[BaseException] = []

    def create() -> None:
        try:
            with MetricsStore.open(settings, retries=0) as store:
                store.ensure_schema(NOW)
                store.save(make_snapshot(f"t{threading.get_ident()}", NOW))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    (count,) = pg_cluster.execute("SELECT count(*) FROM concurrent_check.snapshot", dbname=metrics_db)[0]
    assert count == 4


def test_bytes_used_counts_the_history(store):
    store.save(make_snapshot("sized", NOW))
    total, one = store.bytes_used(), store.bytes_used("sized")
    assert 0 < one < total
    assert store.bytes_used("nobody") == 0


def test_reads_of_a_history_not_created_yet_are_empty(pg_cluster, metrics_db):
    settings = MetricsSettings(dsn=pg_cluster.dsn(metrics_db), schema_name="never_created")
    with MetricsStore.open(settings, retries=0) as store:
        assert store.latest("app") is None and store.latest_all(["app"]) == {}
        assert store.series("app", "connections", NOW - timedelta(days=1)) == []


def test_the_metrics_database_down_is_a_clear_metrics_store_error():
    settings = MetricsSettings(dsn=f"postgresql://postgres@127.0.0.1:{free_port()}/metrics")
    with pytest.raises(MetricsStoreError) as caught:
        MetricsStore.open(settings, retries=0)
    text = str(caught.value)
    assert "the stats history cannot be written or read" in text and "the metrics database" in text
    assert "127.0.0.1" in text and "Traceback" not in text
    assert caught.value.hint and "server is up" in caught.value.hint


def test_naive_times_are_refused(store):
    with pytest.raises(ValueError, match="timezone-aware"):
        store.save(make_snapshot("naive", NOW.replace(tzinfo=None)))
    with pytest.raises(ValueError, match="timezone-aware"):
        store.series("naive", "connections", datetime(2026, 1, 1))


# --- pure helpers ----------------------------------------------------------------------------

def test_real_snapshots_keep_their_statement_windows(store, pg_cluster, fresh_db, metrics_db):
    """What the statements section really produces is what is stored: per statement and role,
    the cumulative numbers and the window's calls/s and mean."""
    from dbops_pipelines.config import parse_config
    from dbops_pipelines.stats.snapshot import take_snapshot

    pg_cluster.execute("CREATE EXTENSION pg_stat_statements", dbname=fresh_db)
    cfg = parse_config({"targets": {"app": {"dsn": pg_cluster.dsn(fresh_db)}}})
    probe = "SELECT count(*) FROM pg_class WHERE relpages > 4242"
    pg_cluster.execute(probe, dbname=fresh_db)
    first = take_snapshot(cfg, "app")
    for _ in range(20):
        pg_cluster.execute(probe, dbname=fresh_db)
    second = take_snapshot(cfg, "app", previous=first)
    target = f"real {fresh_db}"
    for snap in (first, second):
        snap.target = target
        store.save(snap)
    rows = pg_cluster.execute(
        "SELECT s.userid, s.calls, s.total_ms, s.mean_ms, s.calls_per_second, s.mean_ms_window FROM dbops_metrics.statement s "
        "JOIN dbops_metrics.statement_text t USING (target, queryid) WHERE s.target = %s AND s.taken_at = %s "
        "AND t.query LIKE %s", dbname=metrics_db, params=(target, second.taken_at, "%relpages > $1%"))
    [(userid, calls, total_ms, mean_ms, per_second, mean_window)] = rows
    assert userid is not None and calls == 21 and total_ms > 0 and mean_ms > 0
    assert per_second == pytest.approx(20 / second.interval_seconds) and mean_window > 0


def test_json_safe_turns_what_jsonb_refuses_into_null_or_text():
    assert _json_safe({"a": float("inf"), "b": [float("nan"), 1.5], "c": "x\x00y", 1: True}) == \
        {"a": None, "b": [None, 1.5], "c": "x\ufffdy", "1": True}
