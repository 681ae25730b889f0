"""Point-in-time recovery end to end: a real PostgreSQL 15 archiving through `dbops wal-push`
(run by the server as its own OS user) into a local store, a base backup, rows before and after a
point, and `dbops pitr` to a time, an LSN and a restore point: only the earlier rows come back.
Targets outside the archive, and a gap in it, fail before anything is restored."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from dbops_pipelines.cli import main
from dbops_pipelines.localdev.pgcluster import PG_OS_USER, LocalCluster
from dbops_pipelines.localdev.ports import free_port
from dbops_pipelines.wal.basebackup import take_base_backup
from dbops_pipelines.wal.naming import archive_key
from dbops_pipelines_tests.walserver import AS_ROOT, archiving_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    # The archiving cluster and its config: walserver.py (shared with test_verify_base.py).
    with archiving_world(tmp_path_factory.mktemp("pitr")) as w:
        # The story: a base backup, then rows "a", a restore point, a moment, then rows "b".
        w.sql("CREATE TABLE events (id int PRIMARY KEY, tag text)")
        # The server archives first, so the archive's folders in this file store are its own
        # (the test runs as root, the server as postgres: with S3 the question does not arise).
        w.switch_and_wait()
        w.backup = take_base_backup(w.ctx(), "app")
        w.sql("INSERT INTO events SELECT g, 'a' FROM generate_series(1, 100) g")
        w.sql("SELECT pg_create_restore_point('before_b')")
        w.lsn_a = w.sql("SELECT pg_current_wal_lsn()::text")[0][0]
        time.sleep(1.1)
        w.time_a = w.sql("SELECT now()")[0][0].isoformat()
        time.sleep(1.1)
        w.sql("INSERT INTO events SELECT g, 'b' FROM generate_series(101, 150) g")
        w.switch_and_wait()
        yield w


def _pitr(world, capsys, *target):
    into, port = world.base / f"copy-{time.monotonic_ns()}", free_port()
    code = main(["pitr", "app", "--into", str(into), "--port", str(port), *target, "--json", "--timeout", "120"])
    out, err = capsys.readouterr()
    return code, out, err, into, port


def _stop(into: Path) -> None:
    cmd = ["/usr/lib/postgresql/15/bin/pg_ctl", "stop", "-m", "fast", "-D", str(into)]
    subprocess.run(["runuser", "-u", PG_OS_USER, "--", *cmd] if AS_ROOT else cmd, capture_output=True)


@pytest.mark.parametrize("target", ["time", "lsn", "name"])
def test_recovery_to_a_point_keeps_only_what_came_before(world, capsys, target):
    args = {"time": ["--to", world.time_a], "lsn": ["--to-lsn", world.lsn_a], "name": ["--to-name", "before_b"]}[target]
    code, out, err, into, port = _pitr(world, capsys, *args)
    try:
        assert code == 0, err
        result = json.loads(out)
        assert result["state"] == "promoted" and result["base_backup"] == world.backup.backup_id
        assert result["reached_lsn"] and result["rto_seconds"] > 0
        copy = LocalCluster(world.base / "unused", port=port)
        rows = copy.execute("SELECT tag, count(*) FROM events GROUP BY tag ORDER BY tag", dbname="app")
        assert rows == [("a", 100)]
        # The copy never archives into production's archive, and listens on 127.0.0.1 only.
        assert copy.execute("SHOW archive_mode")[0][0] == "off"
        assert copy.execute("SHOW listen_addresses")[0][0] == "127.0.0.1"
    finally:
        _stop(into)


def test_targets_outside_the_archive_fail_before_anything_is_restored(world, capsys):
    code, out, err, into, _ = _pitr(world, capsys, "--to", "2099-01-01T00:00:00Z")
    assert code == 1 and "after the newest archived WAL" in err and not into.exists()
    code, out, err, into, _ = _pitr(world, capsys, "--to", "2000-01-01T00:00:00Z")
    assert code == 1 and "before the end of the oldest base backup" in err and not into.exists()
    code, out, err, into, _ = _pitr(world, capsys, "--to-lsn", "FF/0")
    assert code == 1 and "after the end of the WAL archive" in err and not into.exists()


def test_a_gap_in_the_archive_is_reported_before_restoring(world, capsys):
    ctx = world.ctx()
    cluster = ctx.config.server_of("app")
    world.sql("INSERT INTO events VALUES (1000, 'c')")
    world.switch_and_wait()                         # one more segment, so the gap is inside the range
    first = world.backup.stop_lsn
    from dbops_pipelines.wal.naming import parse_lsn, segment_of
    victim = segment_of(parse_lsn(first), world.backup.timeline).next().name()
    key = archive_key(cluster, victim)
    saved = ctx.store.get_bytes(key)
    ctx.store.delete(key)
    try:
        code, out, err, into, _ = _pitr(world, capsys, "--latest")
        assert code == 1 and f"segment {victim} is missing" in err and not into.exists(), err
    finally:
        ctx.store.put_bytes(key, saved)


def test_a_damaged_segment_never_lets_latest_open_early_and_report_success(world, capsys):
    ctx = world.ctx()
    cluster = ctx.config.server_of("app")
    world.sql("INSERT INTO events VALUES (2000, 'd')")
    world.switch_and_wait()
    from dbops_pipelines.wal.naming import parse_lsn, segment_of
    victim = segment_of(parse_lsn(world.backup.stop_lsn), world.backup.timeline).next().name()
    key = archive_key(cluster, victim)
    saved = ctx.store.get_bytes(key)
    ctx.store.put_bytes(key, saved[:-40] + bytes(b ^ 0xFF for b in saved[-40:]), overwrite=True)
    try:
        code, out, err, into, _ = _pitr(world, capsys, "--latest")
        assert code == 1 and "Traceback" not in err, err
        assert "stopped" in err, err                    # recovery stopped, or did not reach the end
    finally:
        ctx.store.put_bytes(key, saved, overwrite=True)
        _stop(into)
