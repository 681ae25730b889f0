"""The HTML stats report (stats/report.py): window deltas, resets, escaping, charts and missing
sections on hand-made snapshots (pure, no I/O), then end to end from two real snapshots kept in a
real metrics database."""

from __future__ import annotations

import html
import re
import uuid
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from dbops_pipelines.config import MetricsSettings, parse_config
from dbops_pipelines.errors import StatsFailed
from dbops_pipelines.findings import Finding
from dbops_pipelines.stats.history import MetricsStore
from dbops_pipelines.stats.model import Snapshot
from dbops_pipelines.stats.report import build_report, render_report, statement_windows, write_report
from dbops_pipelines.stats.snapshot import take_snapshot

T0 = datetime(2025, 3, 1, 10, 0, tzinfo=timezone.utc)
T1 = T0 + timedelta(hours=2)
GENERATED = T1 + timedelta(minutes=5)
RESET = "2025-01-01T00:00:00+00:00"
START = "2025-02-01T08:00:00+00:00"
HOSTILE = "<script>alert(1)</script>"
ESCAPED = html.escape(HOSTILE)


# -- hand-made section dicts, in the shapes of stats/sections/* ------------------------------

def database(**over) -> dict:
    data = {"database": "app", "datid": 16384, "size_bytes": 10 * 2**20, "shared_buffers_bytes": 128 * 2**20,
            "backends": 3, "xact_commit": 1000, "xact_rollback": 10, "blks_read": 100, "blks_hit": 9000,
            "tup_returned": 0, "tup_fetched": 0, "tup_inserted": 50, "tup_updated": 5, "tup_deleted": 1,
            "conflicts": 0, "temp_files": 2, "temp_bytes": 2048, "deadlocks": 0, "stats_reset": RESET,
            "postmaster_start": START, "cache_hit_ratio": 0.98,
            "checkpoints": {"source": "pg_stat_bgwriter", "timed": 5, "requested": 1, "buffers_written": 100,
                            "stats_reset": RESET},
            "bgwriter": {"buffers_clean": 0, "buffers_backend": 0, "stats_reset": RESET}}
    return data | over


def statement(queryid: int, calls: int, total_ms: float, rows: int, query: str = "SELECT $1",
              userid: int = 10, role: str = "app") -> dict:
    return {"queryid": queryid, "userid": userid, "role": role, "calls": calls, "total_exec_ms": total_ms,
            "mean_exec_ms": total_ms / calls if calls else None, "max_exec_ms": 50.0, "rows": rows,
            "shared_blks_hit": 10, "shared_blks_read": 1, "temp_blks": 0, "query": query,
            "rankings": {"total_time": 1, "calls": 1}}


def statements(top: list[dict], calls: int, total_ms: float, rows: int = 0, stats_reset: str = RESET,
               dealloc: int = 0, entries: int = 500) -> dict:
    return {"available": True, "database": "app", "dbid": 16384, "extension_version": "1.10",
            "extension_schema": "public", "max": 5000, "entries_server": entries,
            "totals": {"entries": entries, "calls": calls, "total_exec_ms": total_ms, "rows": rows},
            "info": {"dealloc": dealloc, "stats_reset": stats_reset}, "top_n": 20,
            "slow_statement_min_calls": 1, "top": top}


def table(name: str, total_bytes: int, ins: int, autovacuums: int, dead: int = 0, oid: int = 5000, **over) -> dict:
    data = {"oid": oid, "schema": "public", "table": name, "name": name, "table_bytes": total_bytes // 2,
            "index_bytes": total_bytes // 2, "toast_bytes": 0, "total_bytes": total_bytes, "size_estimated": False,
            "n_live_tup": 1000, "n_dead_tup": dead, "seq_scan": 1, "seq_tup_read": 10, "idx_scan": 5,
            "n_tup_ins": ins, "n_tup_upd": 3, "n_tup_del": 0, "last_vacuum": None,
            "last_autovacuum": "2025-03-01T11:00:00+00:00", "last_analyze": None, "last_autoanalyze": None,
            "vacuum_count": 0, "autovacuum_count": autovacuums, "analyze_count": 0, "autoanalyze_count": 1,
            "xid_age": 100}
    return data | over


def tables(top: list[dict], unused: int = 0) -> dict:
    return {"tables": len(top), "indexes": 2 * len(top), "stats_reset": RESET, "top_by_size": top,
            "top_by_dead_tuples": [t for t in top if t["n_dead_tup"] > 0], "top_by_seq_tup_read": [],
            "unused_indexes": [], "duplicate_indexes": [], "invalid_indexes": [], "fk_without_index": [],
            "counts": {"unused_indexes": unused, "duplicate_indexes": 0, "invalid_indexes": 0, "fk_without_index": 0}}


def snapshot(taken_at: datetime, sections: dict, findings: list[Finding] = (), errors: dict | None = None,
             target: str = "app") -> Snapshot:
    return Snapshot(target=target, taken_at=taken_at, server_version_num=150004, connect_seconds=0.01,
                    duration_seconds=0.2, sections=sections, findings=list(findings), errors=errors or {})


def part(document: str, section_id: str) -> str:
    match = re.search(rf'<section id="{section_id}">(.*?)</section>', document, re.S)
    assert match, f"no section {section_id}"
    return match.group(1)


def cells(fragment: str) -> list[str]:
    """The text of every table cell, tags (and their attributes) removed."""
    return [html.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<td[^>]*>(.*?)</td>", fragment, re.S)]


def rows_of(fragment: str) -> list[list[str]]:
    return [cells(r) for r in re.findall(r"<tr>(.*?)</tr>", fragment, re.S) if "<td" in r]


def negatives(fragment: str) -> list[str]:
    # A cell that *is* a negative number: a statement's text may well contain " - 1".
    return [c for c in cells(fragment) if re.match(r"\s*[-−]\s?\d", c)]


A_QUERY = "SELECT * FROM orders WHERE id = $1"
B_QUERY = "UPDATE accounts SET balance = balance + $1 WHERE id = $2"


def a_pair() -> tuple[Snapshot, Snapshot]:
    first = snapshot(T0, {
        "database": database(),
        "statements": statements([statement(1, 100, 1000.0, 100, A_QUERY), statement(-2, 10, 5000.0, 10, B_QUERY)],
                                 calls=1000, total_ms=10_000.0),
        "tables": tables([table("public.orders", 2**20, ins=10, autovacuums=1, dead=5)]),
    })
    last = snapshot(T1, {
        "database": database(xact_commit=1500, blks_read=200, blks_hit=9900, size_bytes=12 * 2**20, deadlocks=1),
        "statements": statements([statement(1, 160, 1600.0, 160, A_QUERY), statement(-2, 12, 9000.0, 12, B_QUERY)],
                                 calls=1100, total_ms=15_000.0),
        "tables": tables([table("public.orders", 3 * 2**20, ins=110, autovacuums=3, dead=40)], unused=2),
    })
    return first, last


# -- pure: render_report on hand-made snapshots ----------------------------------------------

def test_the_window_is_the_difference_of_the_two_snapshots():
    first, last = a_pair()
    document = render_report("app", first, last, {}, GENERATED)
    assert "2025-03-01 10:00:00 UTC .. 2025-03-01 12:00:00 UTC (2 h)" in document
    assert "15.4" in document and "Statistics were reset" not in document

    by_total = part(document, "statements").split("<h3>")[1]
    top, second = rows_of(by_total)[:2]
    # B: 2 calls, 4000 ms of the window's 5000 ms; A: 60 calls, 600 ms
    assert top[1] == B_QUERY and top[3:8] == ["2", "4.00 s", "2.00 s", "80.0 %", "2"]
    assert second[1] == A_QUERY and second[3:8] == ["60", "600.00 ms", "10.00 ms", "12.0 %", "60"]
    by_calls = part(document, "statements").split("<h3>")[2]
    assert rows_of(by_calls)[0][1] == A_QUERY
    assert 'title="queryid -2"' in by_total   # signed queryids stay out of the number columns

    db = dict(row for row in rows_of(part(document, "database")))
    assert db["Commits"] == "500" and db["Blocks read"] == "100" and db["Blocks hit"] == "900"
    assert db["Cache hit ratio"] == "90.00 %" and db["Deadlocks"] == "1"
    assert db["Size growth"] == "+2.0 MB" and db["Size now"] == "12.0 MB"

    growth, vacuum = part(document, "tables").split("<h3>")[1:3]
    orders = rows_of(growth)[0]
    assert orders[:3] == ["public.orders", "3.0 MB", "+2.0 MB"] and orders[5] == "100" and orders[8] == "40"
    assert rows_of(vacuum)[0][:3] == ["public.orders", "40", "0 / 2"]
    assert rows_of(vacuum)[0][5] == "2025-03-01 11:00:00 UTC (in the window)" and rows_of(vacuum)[0][4] == "never"
    counts = {row[0]: row[1:] for row in rows_of(part(document, "tables").split("<h3>")[0])}
    assert counts["unused indexes"] == ["0", "2", "+2"]


def test_a_statement_whose_counters_went_backwards_counts_from_its_return_never_negative():
    first, last = a_pair()
    # statement 1 was evicted and came back: fewer calls than before, without any announced reset
    last.sections["statements"]["top"][0] = statement(1, 40, 80.0, 40, A_QUERY)
    document = render_report("app", first, last, {}, GENERATED)
    section = part(document, "statements")
    assert negatives(section) == []
    a_row = next(r for r in rows_of(section.split("<h3>")[1]) if r[1] == A_QUERY)
    assert a_row[3:5] == ["40", "80.00 ms"] and "went backwards" in a_row[-1]
    windows = {w.queryid: w for w in statement_windows(first.sections["statements"], last.sections["statements"])}
    assert windows[1].basis == "backwards" and windows[-2].basis == "window" and windows[-2].calls == 2


def test_a_reset_in_the_window_is_announced_and_counted_since_the_reset():
    first, last = a_pair()
    later = "2025-03-01T11:00:00+00:00"
    last.sections["database"] = database(xact_commit=300, blks_read=10, blks_hit=90, stats_reset=later)
    last.sections["statements"] = statements(
        [statement(1, 7, 70.0, 7, A_QUERY), statement(-2, 3, 30.0, 3, B_QUERY)],
        calls=10, total_ms=100.0, stats_reset=later)
    document = render_report("app", first, last, {}, GENERATED)
    note = re.search(r'<div class="note">(.*?)</div>', document, re.S).group(1)
    assert "reset in this window" in note and "since the reset" in note
    assert "statistics were reset at 2025-03-01 11:00:00 UTC" in note and "pg_stat_statements was reset" in note
    for section_id in ("statements", "database", "tables"):
        assert negatives(part(document, section_id)) == [], section_id
    db = dict(rows_of(part(document, "database")))
    assert db["Commits"] == "300" and db["Cache hit ratio"] == "90.00 %"
    assert "<th>Since the reset</th>" in part(document, "database")
    rows = rows_of(part(document, "statements").split("<h3>")[1])
    assert [r[3] for r in rows] == ["7", "3"] and all(r[-1] == "since the reset" for r in rows)
    orders = rows_of(part(document, "tables").split("<h3>")[1])[0]
    assert orders[5] == "110" and orders[-1] == "since the reset"   # the table's counters restarted with the database's


def test_a_server_restart_alone_is_announced():
    first, last = a_pair()
    last.sections["database"]["postmaster_start"] = "2025-03-01T10:30:00+00:00"
    document = render_report("app", first, last, {}, GENERATED)
    assert "the server restarted at 2025-03-01 10:30:00 UTC" in document


def test_statements_missing_from_the_first_snapshot_are_new_or_an_upper_bound():
    first, last = a_pair()
    last.sections["statements"]["top"].append(statement(3, 5, 25.0, 5, "DELETE FROM carts WHERE id = $1"))
    # the first snapshot listed 2 of its 500 statements: statement 3 may have run before the window
    unknown = {w.queryid: w for w in statement_windows(first.sections["statements"], last.sections["statements"])}
    assert unknown[3].basis == "unknown_start"
    row = next(r for r in rows_of(part(render_report("app", first, last, {}, GENERATED), "statements"))
               if r[1].startswith("DELETE"))
    assert row[3] == "≤ 5" and "at most" in row[-1]
    # ... but when it listed every statement of the database, statement 3 is new in the window
    first.sections["statements"]["totals"]["entries"] = 2
    document = render_report("app", first, last, {}, GENERATED)
    row = next(r for r in rows_of(part(document, "statements")) if r[1].startswith("DELETE"))
    assert row[3] == "5" and row[-1] == "new in window"


def test_text_from_the_database_is_escaped_everywhere():
    first, last = a_pair()
    evil_table = f'public."{HOSTILE}"'
    for snap in (first, last):
        snap.sections["statements"]["top"][0]["query"] = f"SELECT '{HOSTILE}' FROM t"
        snap.sections["statements"]["top"][0]["role"] = HOSTILE
        snap.sections["tables"]["top_by_size"][0]["name"] = evil_table
    last.findings = [Finding("dead_tuples", "warning", HOSTILE, evil_table, f"{HOSTILE} 40 dead tuples",
                             f"VACUUM {HOSTILE}", f"VACUUM (ANALYZE) {evil_table}")]
    last.errors = {"activity": HOSTILE}
    document = render_report(HOSTILE, first, last, {"database_size_bytes": [(T0, 1.0)]}, GENERATED)
    assert "<script" not in document.lower()
    assert document.count(ESCAPED) >= 9   # title, heading, query x3 rankings, role, tables x2, findings, errors
    assert f"SELECT &#x27;{ESCAPED}&#x27; FROM t" in part(document, "statements")
    assert html.escape(evil_table) in part(document, "tables")
    assert f"<code>VACUUM (ANALYZE) {html.escape(evil_table)}</code>" in part(document, "findings")


def test_charts_are_inline_svg_with_the_series_points_and_say_no_data_when_empty():
    first, last = a_pair()
    sizes = [(T0, 2**20), (T0 + timedelta(hours=1), 2 * 2**20), (T1, 3 * 2**20)]
    series = {"database_size_bytes": sizes, "statements_calls_per_second": [],
              "connections_total": [(T0, 4.0), (T1, float("nan")), (T1, 6.0)], "cache_hit_ratio": [(T1, 0.5)]}
    document = render_report("app", first, last, series, GENERATED)
    charts = part(document, "charts")
    assert "<script" not in document and "src=" not in document and 'href="http' not in document

    size = re.search(r'<figure id="chart-database_size_bytes">(.*?)</figure>', charts, re.S).group(1)
    assert 'data-points="3"' in size
    points = re.search(r'<polyline[^>]* points="([^"]+)"', size).group(1).split()
    assert len(points) == 3
    xs, ys = zip(*((float(x), float(y)) for x, y in (p.split(",") for p in points)))
    assert xs[0] < xs[1] < xs[2] and ys[0] > ys[1] > ys[2]   # growing: higher on the page
    assert ">3.0 MB</text>" in size and ">1.0 MB</text>" in size and ">10:00</text>" in size and ">12:00 UTC</text>" in size

    calls = re.search(r'<figure id="chart-statements_calls_per_second">(.*?)</figure>', charts, re.S).group(1)
    assert "no data" in calls and "<polyline" not in calls
    # the activity section names its gauge client_connections; the older connections_total still plots
    connections = re.search(r'<figure id="chart-client_connections">(.*?)</figure>', charts, re.S).group(1)
    assert 'data-points="2"' in connections and "no data" not in connections
    ratio = re.search(r'<figure id="chart-cache_hit_ratio">(.*?)</figure>', charts, re.S).group(1)
    assert "<circle" in ratio and "last 50.00 % · min 50.00 % · max 50.00 % · 1 points" in ratio   # one point still shows
    assert ">52.50 %</text>" in ratio and ">47.50 %</text>" in ratio   # a flat line gets an axis around it
    assert charts.count("<svg") == 4


def test_missing_sections_and_keys_read_not_collected():
    first = snapshot(T0, {}, errors={"statements": "permission denied for view pg_stat_statements"})
    old_database = {k: v for k, v in database().items() if k not in ("deadlocks", "checkpoints", "datid")}
    last = snapshot(T1, {
        "database": old_database,
        "statements": {"available": False, "reason": "the pg_stat_statements extension is not installed in database app",
                       "database": "app", "installed": False, "loaded": True},
        "tables": {"tables": 3, "top_by_size": [table("public.t", 8192, 1, 0)]},   # no counts, no other lists
    })
    document = render_report("app", first, last, {}, GENERATED)
    assert "Not collected in the first snapshot: statements (permission denied for view pg_stat_statements)" in document
    assert "pg_stat_statements not collected: the pg_stat_statements extension is not installed" in document
    assert "database: not collected in the first snapshot" in document
    db = dict(rows_of(part(document, "database")))
    assert db["Commits"] == "n/a" and db["Size now"] == "10.0 MB" and db["Size growth"] == "n/a"
    assert rows_of(part(document, "tables").split("<h3>")[1])[0][-1] == "not in the first snapshot's lists"
    assert "not collected in the last snapshot" in part(
        render_report("app", last, snapshot(T1 + timedelta(hours=1), {}), {}, GENERATED), "statements")


# -- end to end: two real snapshots, a real metrics database -----------------------------------

PROBE = "SELECT count(*) FROM report_probe WHERE v > 5"


@pytest.fixture(scope="module")
def stored(pg_cluster):
    """Two snapshots of a real database with a statement run between them, kept in a metrics database."""
    target_db, metrics_db = f"report_app_{uuid.uuid4().hex[:8]}", f"report_metrics_{uuid.uuid4().hex[:8]}"
    pg_cluster.create_database(target_db)
    pg_cluster.create_database(metrics_db)
    pg_cluster.execute("CREATE EXTENSION pg_stat_statements", dbname=target_db)
    pg_cluster.execute("CREATE TABLE report_probe AS SELECT g AS v FROM generate_series(1, 1000) g", dbname=target_db)
    cfg = parse_config({"targets": {"app": {"dsn": pg_cluster.dsn(target_db), "stats": {"top_n": 50}}}})
    first = take_snapshot(cfg, "app")
    with psycopg.connect(pg_cluster.dsn(target_db), autocommit=True) as conn:
        for _ in range(25):
            conn.execute(PROBE)
    last = take_snapshot(cfg, "app", previous=first)
    assert first.errors == {} and last.errors == {}
    store = MetricsStore.open(MetricsSettings(dsn=pg_cluster.dsn(metrics_db)))
    store.ensure_schema(last.taken_at)
    store.save(first)
    store.save(last)
    yield store, first, last
    store.close()
    pg_cluster.drop_database(target_db, force=True)
    pg_cluster.drop_database(metrics_db, force=True)


def test_write_report_writes_the_statements_run_in_the_window_and_charts(stored, tmp_path):
    store, first, last = stored
    out = tmp_path / "report.html"
    path = write_report(store, "app", first.taken_at - timedelta(minutes=1), last.taken_at + timedelta(minutes=1), out)
    assert path == out.resolve() and sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]   # no temp left
    document = path.read_text(encoding="utf-8")
    statements_part = part(document, "statements")
    probe = next(r for r in rows_of(statements_part) if "report_probe" in r[1])
    assert probe[1] == "SELECT count(*) FROM report_probe WHERE v > $1"
    assert probe[3] == "25" and probe[-1] == "new in window"
    assert "<svg" in document and 'data-points="2"' in part(document, "charts")   # database size, both snapshots
    assert negatives(statements_part) == [] and "Statistics were reset" not in document


def test_a_window_without_two_snapshots_is_refused_with_what_to_do(stored, tmp_path):
    store, first, last = stored
    with pytest.raises(StatsFailed) as only_one:
        build_report(store, "app", first.taken_at, first.taken_at)
    assert "not two snapshots of target 'app'" in only_one.value.message and "(found 1)" in only_one.value.message
    assert "--from/--to" in only_one.value.hint and "schedule" in only_one.value.hint
    with pytest.raises(StatsFailed) as none:
        build_report(store, "app", first.taken_at - timedelta(days=3), first.taken_at - timedelta(days=2))
    assert "(found 0)" in none.value.message
    with pytest.raises(StatsFailed) as no_dir:
        write_report(store, "app", first.taken_at, last.taken_at, tmp_path / "missing" / "r.html")
    assert "does not exist" in no_dir.value.message and not (tmp_path / "missing").exists()
