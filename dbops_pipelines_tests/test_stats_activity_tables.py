"""The activity and tables sections of a stats snapshot, against a real cluster: each condition is
created, its finding must appear with the right object, and must disappear once the condition is
cleared (often by running the finding's own SQL). Pure logic (findings, rates, samples) is tested on
hand-made dicts."""

from __future__ import annotations

import json
import threading
import time
import uuid

import psycopg
import pytest
from psycopg import sql

from dbops_pipelines.config import STATS_THRESHOLD_DEFAULTS, parse_config
from dbops_pipelines.stats.sections import activity, tables
from dbops_pipelines.stats.snapshot import take_snapshot
from dbops_pipelines_tests.receivers import wait_for

HOSTILE_SCHEMA = 'Odd "Schema"'
HOSTILE_TABLE = "Tab le ü"
HOSTILE_COLUMN = 'Vendor "Id" ü'


def snapshot(dsn: str, section, previous=None, top_n: int | None = None, **thresholds):
    stats = {"thresholds": thresholds}
    if top_n is not None:
        stats["top_n"] = top_n
    cfg = parse_config({"targets": {"app": {"dsn": dsn, "stats": stats}}})
    snap = take_snapshot(cfg, "app", previous=previous, sections=[section.SECTION])
    assert snap.errors == {}
    return snap


def found(snap, code: str, obj: str | None = None) -> list:
    return [f for f in snap.findings if f.code == code and (obj is None or f.object == obj)]


def run(dsn: str, *statements: str):
    with psycopg.connect(dsn, autocommit=True) as conn:
        for stmt in statements:
            conn.execute(stmt)


def flush_stats(dsn: str, *statements: str):
    """Run statements and push this backend's table statistics to shared memory at once (15+)."""
    run(dsn, *statements, "SELECT pg_stat_force_next_flush()")


def stat(dsn: str, query: str, params=None):
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(query, params).fetchone()[0]


@pytest.fixture(scope="module")
def module_db(pg_cluster):
    name = f"test_at_{uuid.uuid4().hex[:10]}"
    pg_cluster.create_database(name)
    yield pg_cluster.dsn(name)
    pg_cluster.drop_database(name, force=True)


@pytest.fixture
def session(module_db):
    """Opened connections, closed at the end of the test whatever happens."""
    opened: list[psycopg.Connection] = []

    def open_(app: str, autocommit: bool = True) -> psycopg.Connection:
        conn = psycopg.connect(module_db, autocommit=autocommit, application_name=app)
        opened.append(conn)
        return conn

    yield open_
    for conn in opened:
        conn.close()


def in_thread(target) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


# --- activity -----------------------------------------------------------------------------------

def test_lock_wait_names_the_blocker_and_clears(module_db, session):
    run(module_db, "CREATE TABLE locked_rows (id int PRIMARY KEY, v int)", "INSERT INTO locked_rows VALUES (1, 0)")
    holder = session("lock-holder", autocommit=False)
    holder.execute("UPDATE locked_rows SET v = 1 WHERE id = 1")
    holder_pid = holder.info.backend_pid
    waiter = session("lock-waiter")
    waiter_pid = waiter.info.backend_pid
    done = in_thread(lambda: waiter.execute("UPDATE locked_rows SET v = 2 WHERE id = 1"))
    wait_for(lambda: stat(module_db, "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s",
                            (waiter_pid,)), what="the second session to wait")
    time.sleep(0.8)

    snap = snapshot(module_db, activity, lock_wait_seconds=0.5)
    [finding] = found(snap, "lock_wait", f"blocker pid {holder_pid}")
    assert f"pid {waiter_pid}" in finding.message and "UPDATE locked_rows SET v = 1" in finding.message
    # The holder is idle in its transaction: only ending its session releases the lock.
    assert finding.sql == f"SELECT pg_terminate_backend({holder_pid})"
    [wait] = snap.sections["activity"]["lock_waits"]
    assert [b["pid"] for b in wait["blockers"]] == [holder_pid] and wait["wait_seconds"] > 0.5
    assert snap.sample("waiting_sessions") == 1.0 and snap.sample("longest_lock_wait_seconds") > 0.5
    assert snap.sections["activity"]["by_wait_event"].get("Lock:transactionid") == 1
    # the waiter is reported as a lock wait, not a second time as a long-running query
    assert found(snapshot(module_db, activity, lock_wait_seconds=0.5, long_running_query_seconds=0.5),
                 "long_running_query", f"pid {waiter_pid}") == []

    holder.rollback()
    done.join(10)
    assert not done.is_alive()
    after = snapshot(module_db, activity, lock_wait_seconds=0.5)
    assert found(after, "lock_wait") == [] and after.sample("waiting_sessions") == 0.0


def test_long_running_query_is_found_and_its_sql_cancels_it(module_db, session):
    sleeper = session("sleepy-report")
    pid = sleeper.info.backend_pid
    outcome: list[BaseException] = []

    def sleep():
        try:
            sleeper.execute("SELECT pg_sleep(30)")
        except psycopg.errors.QueryCanceled as exc:
            outcome.append(exc)

    done = in_thread(sleep)
    wait_for(lambda: stat(module_db, "SELECT now() - query_start > interval '1.2 s' FROM pg_stat_activity "
                                       "WHERE pid = %s AND state = 'active'", (pid,)), what="the query to age")
    snap = snapshot(module_db, activity, long_running_query_seconds=1)
    [finding] = found(snap, "long_running_query", f"pid {pid}")
    assert "pg_sleep(30)" in finding.message and "'sleepy-report'" in finding.message
    assert snap.sample("longest_query_seconds") > 1.0

    run(module_db, finding.sql)          # the recommended SQL really cancels it
    done.join(10)
    assert len(outcome) == 1
    assert found(snapshot(module_db, activity, long_running_query_seconds=1), "long_running_query") == []


def test_idle_in_transaction_is_found_and_clears(module_db, session):
    idle = session("forgetful-app", autocommit=False)
    idle.execute("SELECT 1")
    idle.execute("CREATE ROLE forgetful_role PASSWORD 'hunter2-secret'")   # its last query, shown redacted
    pid = idle.info.backend_pid
    time.sleep(1.2)
    snap = snapshot(module_db, activity, idle_in_transaction_seconds=1)
    [finding] = found(snap, "idle_in_transaction", f"pid {pid}")
    assert "forgetful_role" in finding.message and "hunter2" not in json.dumps(snap.to_dict())
    assert finding.sql == f"SELECT pg_terminate_backend({pid})"
    assert "idle_in_transaction_session_timeout" in finding.recommendation
    assert snap.sample("connections", state="idle in transaction") >= 1.0
    assert snap.sample("longest_idle_in_transaction_seconds") > 1.0

    idle.rollback()
    assert found(snapshot(module_db, activity, idle_in_transaction_seconds=1), "idle_in_transaction") == []


def test_connections_above_an_absolute_count_and_back(module_db, session):
    conns = [session("conn-leaker") for _ in range(5)]
    snap = snapshot(module_db, activity, connections_high_count=3)
    [finding] = found(snap, "connections_high", "")
    assert finding.severity == "warning" and "'conn-leaker': 5" in finding.message
    data = snap.sections["activity"]
    assert data["by_application"]["conn-leaker"] == 5 and data["connections_total"] >= 5
    assert snap.sample("client_connections") == data["connections_total"]
    assert snap.sample("max_connections") == data["max_connections"]

    for conn in conns:
        conn.close()
    wait_for(lambda: stat(module_db, "SELECT count(*) = 0 FROM pg_stat_activity "
                                       "WHERE application_name = 'conn-leaker'"), what="the sessions to end")
    assert found(snapshot(module_db, activity, connections_high_count=3), "connections_high") == []


# --- tables -------------------------------------------------------------------------------------

def test_dead_tuples_after_a_mass_delete_and_gone_after_vacuum(module_db):
    flush_stats(module_db,
                "CREATE TABLE churn (id int, pad text) WITH (autovacuum_enabled = false)",
                "INSERT INTO churn SELECT g, repeat('x', 20) FROM generate_series(1, 20000) g",
                "DELETE FROM churn WHERE id % 10 <> 0")
    wait_for(lambda: stat(module_db, "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'churn'") >= 18000,
               what="the deletes in pg_stat_user_tables")
    snap = snapshot(module_db, tables, dead_tuples_count=1000)
    [finding] = found(snap, "dead_tuples", "public.churn")
    assert "18000 dead tuples against 2000 live" in finding.message
    assert finding.sql == "VACUUM (ANALYZE) public.churn"
    assert snap.sample("top_tables_dead_tuples") >= 18000

    run(module_db, finding.sql)
    wait_for(lambda: stat(module_db, "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'churn'") == 0,
               what="VACUUM to report")
    after = snapshot(module_db, tables, dead_tuples_count=1000)
    assert found(after, "dead_tuples", "public.churn") == []
    [churn] = [t for t in after.sections["tables"]["top_by_size"] if t["name"] == "public.churn"]
    assert churn["vacuum_count"] == 1 and churn["last_vacuum"] is not None


def test_duplicate_indexes_name_both_and_their_sql_drops_the_redundant_one(module_db):
    run(module_db,
        "CREATE TABLE dupes (id int CONSTRAINT dupes_pkey PRIMARY KEY, a int, b int, c int)",
        "INSERT INTO dupes SELECT g, g % 7, g % 11, g FROM generate_series(1, 1000) g",
        "CREATE INDEX dupes_a ON dupes (a)", "CREATE INDEX dupes_a_again ON dupes (a)",
        "CREATE INDEX dupes_id ON dupes (id)",
        "CREATE INDEX dupes_b ON dupes (b)", "CREATE INDEX dupes_b_c ON dupes (b, c)")
    snap = snapshot(module_db, tables, unused_index_min_bytes=0)
    dupes = {f.object: f for f in found(snap, "duplicate_index") if "dupes" in f.object}
    assert set(dupes) == {"public.dupes_a_again", "public.dupes_id", "public.dupes_b"}
    assert "public.dupes_a" in dupes["public.dupes_a_again"].message       # names the one to keep
    assert "public.dupes_pkey" in dupes["public.dupes_id"].message         # the primary key is kept
    assert "public.dupes_b_c" in dupes["public.dupes_b"].message           # covered by a longer index
    assert dupes["public.dupes_b"].sql == "DROP INDEX CONCURRENTLY public.dupes_b"
    assert snap.sample("duplicate_indexes") == 3.0

    for finding in dupes.values():
        run(module_db, finding.sql)
    after = snapshot(module_db, tables, unused_index_min_bytes=0)
    assert [f for f in found(after, "duplicate_index") if "dupes" in f.object] == []


def test_unused_index_found_then_gone_once_scanned(module_db):
    run(module_db, "CREATE TABLE lonely (id int, v int)",
        "INSERT INTO lonely SELECT g, g FROM generate_series(1, 5000) g",
        "CREATE INDEX lonely_v ON lonely (v)")
    snap = snapshot(module_db, tables, unused_index_min_bytes=0)
    [finding] = found(snap, "unused_index", "public.lonely_v")
    assert finding.sql == "DROP INDEX CONCURRENTLY public.lonely_v" and "replica" in finding.recommendation
    assert finding.severity == "warning"       # the table is written to: the index costs every insert
    assert found(snapshot(module_db, tables, unused_index_min_bytes=1 << 30), "unused_index", "public.lonely_v") == []

    flush_stats(module_db, "SET enable_seqscan = off", "SELECT * FROM lonely WHERE v = 42")
    wait_for(lambda: stat(module_db, "SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = 'lonely_v'"),
               what="the index scan to be counted")
    assert found(snapshot(module_db, tables, unused_index_min_bytes=0), "unused_index", "public.lonely_v") == []


def test_invalid_index_and_its_sql_rebuilds_it(module_db):
    run(module_db, "CREATE TABLE twice (v int)", "INSERT INTO twice SELECT g % 100 FROM generate_series(1, 1000) g")
    with pytest.raises(psycopg.errors.UniqueViolation):
        run(module_db, "CREATE UNIQUE INDEX CONCURRENTLY twice_v_key ON twice (v)")
    snap = snapshot(module_db, tables)
    [finding] = found(snap, "invalid_index", "public.twice_v_key")
    assert finding.sql.startswith("DROP INDEX CONCURRENTLY public.twice_v_key;")
    assert "REINDEX INDEX CONCURRENTLY public.twice_v_key" in finding.recommendation
    assert snap.sample("invalid_indexes") == 1.0

    run(module_db, "DELETE FROM twice WHERE ctid NOT IN (SELECT min(ctid) FROM twice GROUP BY v)")
    run(module_db, *[stmt for stmt in finding.sql.split(";\n") if stmt.strip()])  # each outside a transaction
    assert stat(module_db, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'twice_v_key'::regclass")
    assert found(snapshot(module_db, tables), "invalid_index") == []


def test_fk_without_index_single_and_multi_column(module_db):
    run(module_db,
        "CREATE TABLE vendors (id int PRIMARY KEY, region int, code int, UNIQUE (region, code))",
        "CREATE TABLE contracts (id int PRIMARY KEY, vendor_id int REFERENCES vendors)",
        "CREATE TABLE offices (id int, region int, code int, CONSTRAINT offices_vendor "
        "FOREIGN KEY (region, code) REFERENCES vendors (region, code))",
        "CREATE INDEX offices_region ON offices (region)")      # a prefix only: does not serve the FK
    snap = snapshot(module_db, tables, fk_without_index_min_bytes=0)
    [single] = found(snap, "fk_without_index", "public.contracts (vendor_id)")
    assert single.sql == "CREATE INDEX CONCURRENTLY ON public.contracts (vendor_id)"
    assert "contracts_vendor_id_fkey" in single.message and "public.vendors" in single.message
    assert "sequential scans" in single.message
    [multi] = found(snap, "fk_without_index", "public.offices (region, code)")
    assert "offices_vendor" in multi.message
    # Below fk_without_index_min_bytes the same finding is only informational.
    assert found(snapshot(module_db, tables, fk_without_index_min_bytes=1 << 30),
                 "fk_without_index", "public.contracts (vendor_id)")[0].severity == "info"

    run(module_db, single.sql, "CREATE INDEX offices_code_region ON offices (code, region)")  # any column order
    after = snapshot(module_db, tables)
    assert [f for f in found(after, "fk_without_index") if "contracts" in f.object or "offices" in f.object] == []


def test_hostile_identifiers_survive_into_runnable_sql(module_db):
    schema, table, column = (sql.Identifier(x) for x in (HOSTILE_SCHEMA, HOSTILE_TABLE, HOSTILE_COLUMN))
    with psycopg.connect(module_db, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
        conn.execute(sql.SQL("CREATE TABLE {}.{} (id int PRIMARY KEY)").format(schema, sql.Identifier("Par.ent")))
        conn.execute(sql.SQL("CREATE TABLE {}.{} (id int, {} int REFERENCES {}.{})").format(
            schema, table, column, schema, sql.Identifier("Par.ent")))
    quoted_table = '"Odd ""Schema"""."Tab le ü"'
    snap = snapshot(module_db, tables)
    [finding] = found(snap, "fk_without_index", f'{quoted_table} ("Vendor ""Id"" ü")')
    assert '"Odd ""Schema"""."Par.ent"' in finding.message
    assert finding.sql == f'CREATE INDEX CONCURRENTLY ON {quoted_table} ("Vendor ""Id"" ü")'

    run(module_db, finding.sql)
    assert found(snapshot(module_db, tables), "fk_without_index", finding.object) == []


def test_a_table_locked_by_a_migration_keeps_its_estimate(module_db, session):
    run(module_db, "CREATE TABLE migrating (id int PRIMARY KEY, v text)",
        "INSERT INTO migrating SELECT g, repeat('m', 50) FROM generate_series(1, 5000) g", "ANALYZE migrating")
    migration = session("migration", autocommit=False)
    migration.execute("LOCK TABLE migrating IN ACCESS EXCLUSIVE MODE")
    started = time.monotonic()
    snap = snapshot(module_db, tables)         # would time out on its lock_timeout if it queued
    assert time.monotonic() - started < 1.0
    [row] = [t for t in snap.sections["tables"]["top_by_size"] if t["name"] == "public.migrating"]
    assert row["size_estimated"] and row["table_bytes"] > 0 and row["index_bytes"] > 0
    migration.rollback()
    [row] = [t for t in snapshot(module_db, tables).sections["tables"]["top_by_size"] if t["name"] == "public.migrating"]
    assert not row["size_estimated"]


def test_table_rates_between_two_snapshots(module_db):
    flush_stats(module_db, "CREATE TABLE busy (id int PRIMARY KEY, v int)",
                "INSERT INTO busy SELECT g, g FROM generate_series(1, 1000) g")
    first = snapshot(module_db, tables)
    flush_stats(module_db, "INSERT INTO busy SELECT g, g FROM generate_series(1001, 3000) g",
                "UPDATE busy SET v = 0 WHERE id <= 100", "DELETE FROM busy WHERE id > 2990")
    wait_for(lambda: stat(module_db, "SELECT n_tup_del FROM pg_stat_user_tables WHERE relname = 'busy'") == 10,
               what="the writes in pg_stat_user_tables")
    second = snapshot(module_db, tables, previous=first)
    rates = second.rates["tables"]["tables"]["public.busy"]
    seconds = second.interval_seconds
    assert rates["inserts_per_second"] == pytest.approx(2000 / seconds)
    assert rates["updates_per_second"] == pytest.approx(100 / seconds)
    assert rates["deletes_per_second"] == pytest.approx(10 / seconds)
    assert rates["growth_bytes_per_second"] > 0


@pytest.fixture(scope="module")
def many_tables_db(pg_cluster):
    name = f"test_at_many_{uuid.uuid4().hex[:8]}"
    pg_cluster.create_database(name)
    run(pg_cluster.dsn(name), "CREATE TABLE parent (id int PRIMARY KEY)", """
        DO $$ BEGIN
          FOR i IN 1..2000 LOOP
            -- a foreign key on every 20th table only: each one costs as much as the table itself
            EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY, parent_id int %s)', i,
                           CASE WHEN i % 20 = 0 THEN 'REFERENCES parent' ELSE '' END);
          END LOOP;
        END $$""")
    yield pg_cluster.dsn(name)
    pg_cluster.drop_database(name, force=True)


def test_thousands_of_tables_give_bounded_lists(many_tables_db):
    snap = snapshot(many_tables_db, tables, top_n=20)
    data = snap.sections["tables"]
    assert data["tables"] == 2001 and data["indexes"] == 2001
    for key in ("top_by_size", "unused_indexes", "duplicate_indexes", "invalid_indexes", "fk_without_index"):
        assert len(data[key]) <= 20, key
    assert len(data["top_by_size"]) == 20
    assert data["counts"]["fk_without_index"] == 100 and len(data["fk_without_index"]) == 20
    assert len(found(snap, "fk_without_index")) == 20
    assert len([s for s in snap.samples if s.name == "table_size_bytes"]) == 10
    assert len(json.dumps(data)) < 100_000


# --- pure logic ---------------------------------------------------------------------------------

def thresholds(**overrides):
    return STATS_THRESHOLD_DEFAULTS.model_copy(update=overrides)


def activity_data(**overrides) -> dict:
    data = {
        "max_connections": 100, "superuser_reserved_connections": 3, "connections_total": 10,
        "by_state": {"active": 2, "idle": 8}, "by_application": {"api": 9, "psql": 1}, "by_wait_event": {},
        "longest_query_seconds": 0.0, "longest_idle_in_transaction_seconds": 0.0, "longest_lock_wait_seconds": 0.0,
        "waiting_sessions": 0, "long_running_queries": [], "idle_in_transaction": [], "lock_waits": [],
    }
    return {**data, **overrides}


def blocker(pid: int, state: str = "active", waiting: bool = False) -> dict:
    return {"pid": pid, "user": "App User", "application": "api", "state": state, "waiting": waiting,
            "age_seconds": 90.0, "query": "ALTER TABLE orders ADD COLUMN x int"}


def test_activity_findings_judge_against_the_given_thresholds():
    query = {"pid": 41, "user": "app", "database": "Shop DB", "application": "api", "age_seconds": 30.0,
             "query": "SELECT 1"}
    data = activity_data(long_running_queries=[query])
    assert activity.findings("t", data, {}, thresholds(long_running_query_seconds=60)) == []
    [f] = activity.findings("t", data, {}, thresholds(long_running_query_seconds=10))
    assert (f.code, f.object, f.sql) == ("long_running_query", "pid 41", "SELECT pg_cancel_backend(41)")
    assert 'database "Shop DB"' in f.message


def test_lock_wait_finding_acts_on_root_blockers():
    wait = {"pid": 7, "user": "app", "database": "shop", "application": "api", "wait_seconds": 20.0,
            "query": "UPDATE orders SET x = 1", "blocker_count": 2,
            "blockers": [blocker(5), blocker(6, waiting=True)]}
    [f] = activity.findings("t", activity_data(lock_waits=[wait]), {}, thresholds(lock_wait_seconds=10))
    assert f.object == "blocker pid 5" and "pid 5 (active" in f.message and "ALTER TABLE orders" in f.message
    assert f.sql == "SELECT pg_cancel_backend(5)" and "1 more" in f.message
    # a pile-up behind one blocker is one finding (one alert) that counts the waiters
    pile = [{**wait, "pid": pid, "wait_seconds": 11.0 + pid} for pid in range(20, 26)] + [wait]
    [f] = activity.findings("t", activity_data(lock_waits=pile), {}, thresholds(lock_wait_seconds=10))
    assert f.object == "blocker pid 5" and f.message.startswith("7 session(s) waiting") and "pid 25" in f.message
    assert activity.findings("t", activity_data(lock_waits=[wait]), {}, thresholds(lock_wait_seconds=30)) == []

    prepared = {**wait, "blocker_count": 1, "blockers": [{**blocker(0), "state": None}]}
    [f] = activity.findings("t", activity_data(lock_waits=[prepared]), {}, thresholds(lock_wait_seconds=10))
    assert "prepared transaction" in f.message and f.sql is None and f.object == "blocker prepared transaction"


def test_connections_high_severity():
    assert activity.findings("t", activity_data(connections_total=80), {}, thresholds()) == []
    [warn] = activity.findings("t", activity_data(connections_total=81), {}, thresholds())
    [crit] = activity.findings("t", activity_data(connections_total=96), {}, thresholds())
    assert (warn.severity, crit.severity) == ("warning", "critical")
    assert "'api': 9" in warn.message
    [by_count] = activity.findings("t", activity_data(connections_total=11), {}, thresholds(connections_high_count=10))
    assert by_count.object == ""


def test_activity_samples_use_a_bounded_state_set():
    data = activity_data(by_state={"active": 1, "idle": 2, None: 0, "something new": 3})
    data["by_state"].pop(None)
    got = {s.labels[0][1]: s.value for s in activity.samples(data, {}) if s.name == "connections"}
    assert set(got) == set(activity.STATES) and got["unknown"] == 3.0
    assert all(not s.name.endswith("_total") for s in activity.samples(data, {}) if s.kind == "gauge")


def table_row(name: str, **overrides) -> dict:
    row = {"oid": 1, "schema": "public", "table": name, "name": f"public.{name}", "table_bytes": 1 << 30,
           "index_bytes": 0, "toast_bytes": 0, "total_bytes": 1 << 30, "size_estimated": False,
           "n_live_tup": 1000, "n_dead_tup": 0, "seq_scan": 0, "seq_tup_read": 0, "idx_scan": 0,
           "n_tup_ins": 0, "n_tup_upd": 0, "n_tup_del": 0, "last_vacuum": None, "last_autovacuum": None,
           "last_analyze": None, "last_autoanalyze": None, "vacuum_count": 0, "autovacuum_count": 0,
           "analyze_count": 0, "autoanalyze_count": 0, "xid_age": 100}
    return {**row, **overrides}


def tables_data(**overrides) -> dict:
    data = {"tables": 1, "indexes": 0, "stats_reset": None, "top_by_size": [], "top_by_dead_tuples": [],
            "top_by_seq_tup_read": [], "unused_indexes": [], "duplicate_indexes": [], "invalid_indexes": [],
            "fk_without_index": [], "counts": {}}
    return {**data, **overrides}


def test_table_findings_thresholds():
    th = thresholds(dead_tuples_count=1000, dead_tuples_ratio=0.2, seq_scan_heavy_min_scans=100,
                    seq_scan_heavy_min_bytes=1 << 20, seq_scan_heavy_max_index_ratio=0.05)
    dead_ratio_low = table_row("a", n_dead_tup=1500, n_live_tup=10_000)      # 15% < 20%
    dead = table_row("b", n_dead_tup=5000, n_live_tup=10_000)
    heavy = table_row("c", seq_scan=500, idx_scan=10, seq_tup_read=10**9)       # 2% by index
    heavy_small = table_row("d", seq_scan=500, idx_scan=None, table_bytes=2 << 20)
    indexed = table_row("e", seq_scan=500, idx_scan=100)
    data = tables_data(top_by_size=[dead_ratio_low, dead, heavy, heavy_small, indexed],
                       top_by_dead_tuples=[dead])
    got = {(f.code, f.object): f for f in tables.findings("t", data, {}, th)}
    assert set(got) == {("dead_tuples", "public.b"), ("seq_scan_heavy", "public.c"), ("seq_scan_heavy", "public.d")}
    assert got[("seq_scan_heavy", "public.c")].severity == "warning"
    assert got[("seq_scan_heavy", "public.d")].severity == "info"


def test_index_and_fk_findings_on_hand_made_rows():
    fk = {"constraint": '"Fk ü"', "table": 'public."Orders"', "columns": ['"Customer Id"', "region"],
          "referenced_table": "public.customers", "seq_scan": 12, "table_bytes": 4096, "partitioned": False}
    dup = {"index": "public.i_dup", "kept_index": "public.i_pk", "table": "public.t", "kind": "exact",
           "backs_constraint": True, "bytes": 8192, "definition": "d1", "kept_definition": "d2"}
    unused = {"index": "public.i_unused", "table": "public.t", "bytes": 100, "idx_scan": 0, "table_writes": 0,
              "definition": "d"}
    data = tables_data(fk_without_index=[fk], duplicate_indexes=[dup], unused_indexes=[unused])
    got = {f.code: f for f in tables.findings("t", data, {}, thresholds(fk_without_index_min_bytes=1 << 20,
                                                                         unused_index_min_bytes=0))}
    assert got["fk_without_index"].object == 'public."Orders" ("Customer Id", region)'
    assert got["fk_without_index"].severity == "info" and "12 sequential scans" in got["fk_without_index"].message
    assert got["fk_without_index"].sql == 'CREATE INDEX CONCURRENTLY ON public."Orders" ("Customer Id", region)'
    assert got["duplicate_index"].sql is None and "DROP CONSTRAINT" in got["duplicate_index"].recommendation
    assert got["unused_index"].severity == "info"      # a table nobody writes: the index costs only space
    assert "unused_index" not in {f.code for f in tables.findings("t", data, {}, thresholds(unused_index_min_bytes=101))}


def test_table_rates_across_resets_and_recreation():
    prev = tables_data(top_by_size=[table_row("a", n_tup_ins=100, vacuum_count=1, total_bytes=1000),
                                    table_row("b", n_tup_ins=100), table_row("c", oid=3)])
    cur = tables_data(top_by_size=[table_row("a", n_tup_ins=300, vacuum_count=3, total_bytes=1500),
                                   table_row("b", n_tup_ins=5, n_tup_upd=50),       # reset: went backwards
                                   table_row("c", oid=4),                           # dropped and created again
                                   table_row("d")])                                 # new in the top list
    got = tables.rates(prev, cur, 10.0)["tables"]
    assert got["public.a"]["inserts_per_second"] == 20.0 and got["public.a"]["vacuums"] == 2
    assert got["public.a"]["growth_bytes_per_second"] == 50.0
    assert got["public.b"]["inserts_per_second"] is None and got["public.b"]["updates_per_second"] is None
    assert got["public.b"]["vacuums"] is None
    assert "public.c" not in got and "public.d" not in got
    estimated = tables_data(top_by_size=[table_row("a", n_tup_ins=300, size_estimated=True)])
    assert tables.rates(prev, estimated, 10.0)["tables"]["public.a"]["growth_bytes_per_second"] is None
    assert tables.rates(None, cur, 10.0) == {}


def test_an_unfinished_partitioned_index_is_not_given_sql_that_cannot_run(module_db):
    with psycopg.connect(module_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE parted (id int, v int) PARTITION BY RANGE (id)")
        conn.execute("CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (10)")
        conn.execute("CREATE INDEX parted_v ON ONLY parted (v)")        # invalid until partitions attach
    [finding] = found(snapshot(module_db, tables), "invalid_index", "public.parted_v")
    assert finding.severity == "info" and finding.sql is None and "ATTACH PARTITION" in finding.recommendation


def test_fk_without_index_on_a_partitioned_table_counts_its_partitions(module_db):
    with psycopg.connect(module_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE owners (id int PRIMARY KEY)")
        conn.execute("INSERT INTO owners SELECT generate_series(1, 10)")
        conn.execute("CREATE TABLE events (id int, owner_id int REFERENCES owners, pad text) PARTITION BY RANGE (id)")
        conn.execute("CREATE TABLE events_1 PARTITION OF events FOR VALUES FROM (0) TO (1000000)")
        conn.execute("INSERT INTO events SELECT g, 1 + g % 10, repeat('x', 200) FROM generate_series(1, 20000) g")
        conn.execute("ANALYZE events_1")
        conn.execute("SELECT count(*) FROM events")           # a sequential scan of the partition
    wait_for(lambda: stat(module_db, "SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'events_1'"),
             what="the partition's scan to be counted")
    [finding] = found(snapshot(module_db, tables, fk_without_index_min_bytes=1 << 20),
                      "fk_without_index", "public.events (owner_id)")
    assert finding.severity == "warning"                       # ~5 MB in its partition, not "-0.0 MB"
    assert "-0.0" not in finding.message and " 0 sequential" not in finding.message
