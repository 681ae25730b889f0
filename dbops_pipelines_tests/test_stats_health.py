"""The health section: wraparound, replication, slots and the WAL archiver.

The end-to-end tests run against real servers of their own: a primary with a streaming standby
made by pg_basebackup (replay paused to make lag), an inactive physical slot holding WAL, and a
cluster whose archive_command fails and is then fixed. The unit tests judge hand-made dicts.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import time
from pathlib import Path

import pytest

from dbops_pipelines.config import STATS_THRESHOLD_DEFAULTS, parse_config
from dbops_pipelines.localdev.pgcluster import DEFAULT_PG_BIN, PG_OS_USER, LocalCluster
from dbops_pipelines.stats.sections.health import SECTION, findings, rates, samples
from dbops_pipelines.stats.snapshot import take_snapshot
from dbops_pipelines_tests.receivers import wait_for

STANDBY_APP = "dbops standby"            # a space: the finding's object must quote it
STANDBY_OBJECT = 'standby "dbops standby"'
HOSTILE_DB = 'we"ird db.ü'
HOSTILE_DB_QUOTED = '"we""ird db.ü"'
AS_ROOT = os.geteuid() == 0


# -- helpers ------------------------------------------------------------------------------------

def _pg_tool(tool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """A PostgreSQL 15 client/server tool run the way LocalCluster runs them (as postgres when root)."""
    cmd = [str(Path(os.environ.get("DBOPS_PG_BIN", DEFAULT_PG_BIN)) / tool), *args]
    if AS_ROOT:
        cmd = ["runuser", "-u", PG_OS_USER, "--", *cmd]
    return subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, text=True, timeout=120)


def _owned_by_postgres(path: Path) -> None:
    """An empty 0700 directory the server user owns, reachable through root's pytest dirs."""
    path.mkdir(mode=0o700, exist_ok=True)
    if AS_ROOT:
        pg = pwd.getpwnam(PG_OS_USER)
        os.chown(path, pg.pw_uid, pg.pw_gid)
        for d in path.parents:
            if d.stat().st_uid != pg.pw_uid and not d.stat().st_mode & stat.S_IXOTH:
                os.chmod(d, stat.S_IMODE(d.stat().st_mode) | stat.S_IXOTH)


def _append_conf(cluster: LocalCluster, lines: str) -> None:
    # postgresql.auto.conf is read last, so it wins over LocalCluster's own conf file.
    with open(cluster.data_dir / "postgresql.auto.conf", "a") as conf:
        conf.write("\n" + lines + "\n")


def _snapshot(dsn: str, previous=None, **thresholds):
    cfg = parse_config({"targets": {"db": {"dsn": dsn, "stats": {"thresholds": thresholds}}}})
    snap = take_snapshot(cfg, "db", previous=previous, sections=[SECTION])
    assert snap.errors == {}
    return snap


def _found(snap, code: str) -> dict:
    return {f.object: f for f in snap.findings if f.code == code}


def _one(cluster: LocalCluster, query: str, dbname: str = "postgres"):
    return cluster.execute(query, dbname=dbname)[0][0]


def _standby_has_replayed(primary: LocalCluster, standby: LocalCluster) -> bool:
    target = _one(primary, "SELECT pg_current_wal_lsn()::text")
    return _one(standby, f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn")


# -- clusters -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def primary(tmp_path_factory):
    cluster = LocalCluster(tmp_path_factory.mktemp("health-primary"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def standby(primary, tmp_path_factory):
    """A hot standby streaming from ``primary``: pg_basebackup -R, then LocalCluster over its data
    directory, which rewrites the copied port and socket settings to the standby's own."""
    cluster = LocalCluster(tmp_path_factory.mktemp("health-standby"))
    try:
        _owned_by_postgres(cluster.data_dir)
        source = f"host={primary.host} port={primary.port} user=postgres application_name='{STANDBY_APP}'"
        result = _pg_tool("pg_basebackup", "-R", "-X", "stream", "-D", str(cluster.data_dir), "-d", source,
                          cwd=cluster.base_dir)
        assert result.returncode == 0, result.stdout
        # Report replay progress every second, so the primary sees a caught-up standby promptly.
        _append_conf(cluster, "wal_receiver_status_interval = 1")
        cluster.start()
        wait_for(lambda: _one(primary, "SELECT count(*) FROM pg_stat_replication "
                                        f"WHERE application_name = '{STANDBY_APP}' AND state = 'streaming'"),
                  30, "the standby to stream")
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def failing_archiver(tmp_path_factory):
    cluster = LocalCluster(tmp_path_factory.mktemp("health-archiver"))
    try:
        cluster.init()
        _append_conf(cluster, "archive_mode = on\narchive_command = '/bin/false'")
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


# -- end to end: replication --------------------------------------------------------------------

def test_paused_standby_lags_and_catches_up(primary, standby):
    primary.execute("CREATE TABLE lag_probe (id int, pad text)")
    primary.execute("INSERT INTO lag_probe VALUES (0, 'first commit for the standby to replay')")
    wait_for(lambda: _standby_has_replayed(primary, standby), 30, "the standby to replay the first commit")
    standby.execute("SELECT pg_wal_replay_pause()")
    try:
        primary.execute("INSERT INTO lag_probe SELECT g, repeat('x', 200) FROM generate_series(1, 10000) g")
        written = _one(primary, "SELECT pg_current_wal_lsn()::text")
        wait_for(lambda: _one(standby, f"SELECT pg_last_wal_receive_lsn() >= '{written}'::pg_lsn"), 30,
                  "the standby to receive the new WAL")

        on_primary = _snapshot(primary.dsn(), replication_lag_bytes=1024, replication_lag_seconds=3600)
        lag = _found(on_primary, "replication_lag")
        assert set(lag) == {STANDBY_OBJECT}
        assert lag[STANDBY_OBJECT].severity == "warning"
        assert on_primary.sample("replication_lag_bytes", application=STANDBY_APP) > 1024
        assert on_primary.sample("replication_lag_bytes_max") > 1024
        assert on_primary.sample("in_recovery") == 0
        row = on_primary.sections["health"]["replication"]["standbys"][0]
        assert row["application_name"] == STANDBY_APP and row["state"] == "streaming"
        assert row["replay_lsn"] is not None and row["lag_bytes"] > 1024

        on_standby = _snapshot(standby.dsn(), replication_lag_bytes=1024, replication_lag_seconds=3600)
        data = on_standby.sections["health"]
        assert on_standby.sample("in_recovery") == 1
        assert data["in_recovery"] and data["standby"]["replay_paused"]
        assert data["standby"]["receiver_status"] == "streaming"
        assert data["standby"]["replay_lag_bytes"] > 1024
        assert on_standby.sample("standby_replay_lag_seconds") is not None
        own = _found(on_standby, "replication_lag")[""]
        assert "replay is paused" in own.message
        assert own.sql == "SELECT pg_wal_replay_resume()"
        standby.execute(own.sql)
    finally:
        standby.execute("SELECT pg_wal_replay_resume()")

    def caught_up():
        snap = _snapshot(primary.dsn(), replication_lag_bytes=1024, replication_lag_seconds=3600)
        return snap if not _found(snap, "replication_lag") else None

    after = wait_for(caught_up, 30, "the replication_lag finding to clear", interval=0.5)
    assert after.sample("replication_lag_bytes", application=STANDBY_APP) <= 1024
    wait_for(lambda: not _found(_snapshot(standby.dsn(), replication_lag_bytes=1024,
                                           replication_lag_seconds=3600), "replication_lag"),
              30, "the standby's own replay lag to clear", interval=0.5)


def test_pg_monitor_is_enough_on_primary_and_standby(primary, standby):
    primary.execute("CREATE ROLE dbops_health_monitor LOGIN IN ROLE pg_monitor")
    wait_for(lambda: _standby_has_replayed(primary, standby), 30, "the role to reach the standby")
    on_primary = _snapshot(primary.dsn(user="dbops_health_monitor"))
    row = on_primary.sections["health"]["replication"]["standbys"][0]
    assert row["application_name"] == STANDBY_APP
    assert row["replay_lsn"] is not None and row["lag_bytes"] is not None   # hidden without pg_read_all_stats
    assert on_primary.sections["health"]["wal_lsn"] is not None

    on_standby = _snapshot(standby.dsn(user="dbops_health_monitor"))
    assert on_standby.sections["health"]["standby"]["receiver_status"] == "streaming"
    assert on_standby.sections["health"]["wal_lsn"] is not None


def test_inactive_slot_retaining_wal_is_found_and_dropped_by_its_sql(primary):
    primary.execute("SELECT pg_create_physical_replication_slot('dbops_test_slot', true)")
    primary.execute("CREATE TABLE slot_probe AS SELECT g, repeat('y', 200) AS pad FROM generate_series(1, 5000) g")
    primary.execute("SELECT pg_switch_wal()")
    primary.execute("INSERT INTO slot_probe SELECT g, 'more' FROM generate_series(1, 1000) g")

    snap = _snapshot(primary.dsn(), slot_retained_wal_bytes=1024)
    slot = _found(snap, "slot_retained_wal")["dbops_test_slot"]
    assert slot.severity == "warning"
    assert slot.sql == "SELECT pg_drop_replication_slot('dbops_test_slot')"
    assert snap.sample("slot_retained_wal_bytes", slot="dbops_test_slot") > 1024
    assert snap.sections["health"]["slots"]["inactive_count"] == 1

    primary.execute(slot.sql)
    after = _snapshot(primary.dsn(), slot_retained_wal_bytes=1024)
    assert _found(after, "slot_retained_wal") == {}
    assert after.sections["health"]["slots"]["slot_count"] == 0


def test_wraparound_names_each_database_quoted(primary):
    primary.create_database(HOSTILE_DB)
    try:
        for _ in range(3):   # each a transaction ID, so every database's age is past 1
            primary.execute("SELECT txid_current()")
        snap = _snapshot(primary.dsn(), wraparound_warning_age=1)
        found = _found(snap, "wraparound")
        assert found[HOSTILE_DB_QUOTED].severity == "warning"
        assert found["postgres"].severity == "warning"
        assert HOSTILE_DB_QUOTED in found[HOSTILE_DB_QUOTED].message
        assert found[HOSTILE_DB_QUOTED].sql == "VACUUM (FREEZE)"
        assert found['template0'].sql is None          # no connections: only autovacuum can freeze it
        assert snap.sample("xid_age", database=HOSTILE_DB) > 1
        assert snap.sample("xid_age_max") >= snap.sample("xid_age", database=HOSTILE_DB)

        critical = _snapshot(primary.dsn(), wraparound_warning_age=1, wraparound_critical_age=1)
        assert _found(critical, "wraparound")[HOSTILE_DB_QUOTED].severity == "critical"
        assert _found(_snapshot(primary.dsn()), "wraparound") == {}   # the defaults: a young cluster is fine
    finally:
        primary.drop_database(HOSTILE_DB)


# -- end to end: archiver -----------------------------------------------------------------------

def _archiver_counts(cluster: LocalCluster) -> tuple[int, int]:
    return cluster.execute("SELECT archived_count, failed_count FROM pg_stat_archiver")[0]


def test_failing_archive_command_is_critical_until_fixed(failing_archiver):
    cluster = failing_archiver
    cluster.execute("CREATE TABLE archive_probe AS SELECT g FROM generate_series(1, 1000) g")
    cluster.execute("SELECT pg_switch_wal()")
    wait_for(lambda: _archiver_counts(cluster)[1] > 0, 20, "archive_command to fail")
    # The archiver retries a file a few times a second apart, then waits: let the count settle, so
    # the next window holds no failure of the broken command.
    seen = [_archiver_counts(cluster)[1]]

    def settled():
        time.sleep(1.5)   # longer than the archiver's pause between retries
        seen.append(_archiver_counts(cluster)[1])
        return seen[-1] == seen[-2]

    wait_for(settled, 15, "the failures to settle", interval=0)

    failing = _snapshot(cluster.dsn())
    arch = failing.sections["health"]["archiver"]
    assert arch["active"] and arch["failed_count"] > 0 and arch["archived_count"] == 0
    found = _found(failing, "archiver_failing")[""]
    assert found.severity == "critical"
    assert arch["last_failed_wal"] in found.message
    assert "server log" in found.recommendation and "pg_wal" in found.recommendation
    assert failing.sample("archiver_failed_total") == arch["failed_count"]

    cluster.execute("ALTER SYSTEM SET archive_command = '/bin/true'")
    cluster.execute("SELECT pg_reload_conf()")
    wait_for(lambda: _archiver_counts(cluster)[0] > 0, 20, "archiving to work again")

    fixed = _snapshot(cluster.dsn(), previous=failing)
    assert _found(fixed, "archiver_failing") == {}
    assert fixed.rates["health"]["archived_in_window"] >= 1
    assert fixed.rates["health"]["failed_in_window"] == 0
    assert fixed.sample("archiver_last_archived_age_seconds") is not None


# -- unit: findings, rates and samples on hand-made data -----------------------------------------

def _thresholds(**overrides):
    return STATS_THRESHOLD_DEFAULTS.model_copy(update=overrides)


def _archiver(**overrides) -> dict:
    return {"archive_mode": "on", "active": True, "archived_count": 10, "last_archived_wal": "000000010000000000000009",
            "last_archived_at": "2025-01-01T00:00:00+00:00", "last_archived_age_seconds": 30.0,
            "failed_count": 0, "last_failed_wal": None, "last_failed_at": None, "last_failed_age_seconds": None,
            "stats_reset": "2024-12-01T00:00:00+00:00", **overrides}


def _standby_row(app: str, lag_bytes: int | None, replay_lag: float | None = None) -> dict:
    return {"pid": 100, "application_name": app, "client_addr": "10.0.0.2", "state": "streaming",
            "sync_state": "async", "sent_lsn": "0/5000000", "write_lsn": "0/5000000", "flush_lsn": "0/5000000",
            "replay_lsn": "0/4000000", "lag_bytes": lag_bytes, "write_lag_seconds": None,
            "flush_lag_seconds": None, "replay_lag_seconds": replay_lag, "xmin_age": None}


def _slot(name: str, retained: int, active: bool = False, wal_status: str = "reserved", database=None) -> dict:
    return {"name": name, "quoted": name, "slot_type": "logical" if database else "physical",
            "database": database, "database_quoted": database and '"' + database.replace('"', '""') + '"',
            "temporary": False, "active": active, "restart_lsn": "0/1000000", "retained_wal_bytes": retained,
            "wal_status": wal_status, "safe_wal_size": None, "xmin_age": None}


def _data(databases=(), standbys=(), slots=(), standby=None, archiver=None, xmin_holders=None) -> dict:
    return {
        "in_recovery": standby is not None, "wal_lsn": "0/5000000",
        "wraparound": {"autovacuum_freeze_max_age": 200_000_000, "autovacuum_multixact_freeze_max_age": 400_000_000,
                       "database_count": len(databases), "databases": list(databases)},
        "xmin_holders": xmin_holders or {"session": None, "prepared_xact": None, "slot": None, "standby": None},
        "standby": standby,
        "replication": {"standby_count": len(standbys), "standbys": list(standbys)},
        "slots": {"slot_count": len(slots), "inactive_count": sum(not s["active"] for s in slots),
                  "slots": list(slots)},
        "archiver": archiver or _archiver(),
    }


def _db(name: str, quoted: str, xid_age: int, mxid_age: int = 0, allow: bool = True) -> dict:
    return {"name": name, "quoted": quoted, "xid_age": xid_age, "mxid_age": mxid_age, "allow_connections": allow}


def _codes(data, rates_=None, **th):
    return {(f.code, f.object): f for f in findings("t", data, rates_ or {}, _thresholds(**th))}


def test_wraparound_severity_follows_the_larger_age():
    data = _data(databases=[_db("young", "young", 1000), _db("Old DB", '"Old DB"', 600_000_000),
                            _db("mxid", "mxid", 10, mxid_age=1_300_000_000),
                            _db("template0", "template0", 700_000_000, allow=False)],
                 xmin_holders={"session": {"pid": 42, "age": 599_000_000}, "prepared_xact": {"gid": "it's", "age": 5},
                               "slot": None, "standby": None})
    found = _codes(data)
    assert set(found) == {("wraparound", '"Old DB"'), ("wraparound", "mxid"), ("wraparound", "template0")}
    old = found[("wraparound", '"Old DB"')]
    assert old.severity == "warning" and old.sql == "VACUUM (FREEZE)"
    assert "pid 42" in old.message and "'it''s'" in old.message   # who holds xmin back, gid as a literal
    assert found[("wraparound", "mxid")].severity == "critical"
    assert found[("wraparound", "template0")].sql is None


def test_replication_lag_by_bytes_or_seconds_one_per_application():
    data = _data(standbys=[_standby_row('my "app"', 100 << 20), _standby_row('my "app"', 5 << 20),
                           _standby_row("slowpoke", 10, replay_lag=120.0), _standby_row("fine", 10, 1.0)])
    found = _codes(data)
    assert set(found) == {("replication_lag", 'standby "my ""app"""'), ("replication_lag", "standby slowpoke")}
    assert "2 standbys share" in found[("replication_lag", 'standby "my ""app"""')].message
    assert "100.0 MB" in found[("replication_lag", 'standby "my ""app"""')].message
    assert _codes(data, replication_lag_bytes=200 << 20, replication_lag_seconds=600) == {}


def test_standby_own_replay_lag():
    standby = {"receiver_status": "streaming", "receive_lsn": "0/5000000", "replay_lsn": "0/4000000",
               "replay_lag_bytes": 16 << 20, "last_replay_age_seconds": 90.0, "replay_lag_seconds": 90.0,
               "replay_paused": False}
    found = _codes(_data(standby=standby))
    assert found[("replication_lag", "")].sql is None
    paused = _codes(_data(standby={**standby, "replay_paused": True}))
    assert paused[("replication_lag", "")].sql == "SELECT pg_wal_replay_resume()"
    caught_up = {**standby, "replay_lag_bytes": 0, "replay_lag_seconds": 0.0}
    assert _codes(_data(standby=caught_up)) == {}


def test_only_inactive_slots_over_the_limit_and_lost_or_unreserved_are_critical():
    data = _data(slots=[_slot("busy", 5 << 30, active=True), _slot("small", 10), _slot("big", 2 << 30),
                        _slot("edge", 3 << 30, wal_status="unreserved"), _slot("gone", 0, wal_status="lost"),
                        _slot("sub", 2 << 30, database="Shop DB")])
    found = _codes(data)
    assert set(found) == {("slot_retained_wal", n) for n in ("big", "edge", "gone", "sub")}
    assert found[("slot_retained_wal", "big")].severity == "warning"
    assert found[("slot_retained_wal", "big")].sql == "SELECT pg_drop_replication_slot('big')"
    assert found[("slot_retained_wal", "edge")].severity == "critical"
    assert found[("slot_retained_wal", "gone")].severity == "critical"
    assert '"Shop DB"' in found[("slot_retained_wal", "sub")].recommendation


def test_archiver_failing_now_recovered_or_off():
    failing = _archiver(failed_count=4, last_failed_wal="00000001000000000000000A", last_failed_age_seconds=5.0)
    found = _codes(_data(archiver=failing), {"failed_in_window": 4})[("archiver_failing", "")]
    assert found.severity == "critical" and "00000001000000000000000A" in found.message and "5.0 s ago" in found.message
    # Failing now is known without a previous snapshot too.
    assert _codes(_data(archiver=failing))[("archiver_failing", "")].severity == "critical"

    recovered = _archiver(failed_count=4, last_failed_wal="00000001000000000000000A", last_failed_age_seconds=60.0)
    assert _codes(_data(archiver=recovered), {"failed_in_window": 2})[("archiver_failing", "")].severity == "warning"
    assert _codes(_data(archiver=recovered), {"failed_in_window": 0}) == {}
    assert _codes(_data(archiver={**failing, "active": False, "archive_mode": "off"}), {"failed_in_window": 4}) == {}


def test_archiver_rates_and_resets():
    before = _data(archiver=_archiver(archived_count=10, failed_count=1))
    after = _data(archiver=_archiver(archived_count=40, failed_count=4))
    r = rates(before, after, 300.0)
    assert r == {"archived_per_second": 0.1, "archived_in_window": 30, "failed_per_second": 0.01, "failed_in_window": 3}
    assert rates(None, after, 300.0) == {}

    reset = _data(archiver=_archiver(archived_count=40, failed_count=4, stats_reset="2025-02-01T00:00:00+00:00"))
    assert set(rates(before, reset, 300.0).values()) == {None}
    backwards = _data(archiver=_archiver(archived_count=5, failed_count=0))
    assert set(rates(before, backwards, 300.0).values()) == {None}


def test_samples_are_bounded_and_named_the_prometheus_way():
    data = _data(databases=[_db(f"db{i}", f"db{i}", 1000 + i) for i in range(15)],
                 standbys=[_standby_row(f"s{i}", 1000 - i, 0.5) for i in range(12)],
                 slots=[_slot(f"slot{i}", 100 - i) for i in range(12)])
    out = samples(data, {})
    names = [s.name for s in out]
    assert names.count("xid_age") == 10 and names.count("replication_lag_bytes") == 10
    assert names.count("replication_lag_seconds") == 10 and names.count("slot_retained_wal_bytes") == 10
    by_name = {s.name: s for s in out if not s.labels}
    assert by_name["xid_age_max"].value == 1014
    assert by_name["replication_lag_bytes_max"].value == 1000
    assert by_name["in_recovery"].value == 0
    assert "standby_replay_lag_seconds" not in by_name
    assert ("database", "db14") in [lbl for s in out if s.name == "xid_age" for lbl in s.labels]
    assert ("database", "db0") not in [lbl for s in out if s.name == "xid_age" for lbl in s.labels]
    assert all(s.name.endswith("_total") == (s.kind == "counter") for s in out)
    assert all(s.help for s in out)
