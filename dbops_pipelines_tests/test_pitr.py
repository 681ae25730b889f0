"""Point-in-time recovery end to end: a real PostgreSQL 15 archiving through `dbops wal-push`
(run by the server as its own OS user) into a local store, a base backup, rows before and after a
point, and `dbops pitr` to a time, an LSN and a restore point: only the earlier rows come back.
Targets outside the archive, and a gap in it, fail before anything is restored."""

from __future__ import annotations

import base64
import json
import os
import pwd
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dbops_pipelines.cli import main
from dbops_pipelines.config import load_config
from dbops_pipelines.context import FleetContext
from dbops_pipelines.localdev.pgcluster import PG_OS_USER, LocalCluster
from dbops_pipelines.localdev.ports import free_port
from dbops_pipelines.wal.basebackup import take_base_backup
from dbops_pipelines.wal.naming import archive_key

KEY_ENV = "DBOPS_TEST_PITR_KEY"
AS_ROOT = os.geteuid() == 0


def _for_server(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    if AS_ROOT:
        pg = pwd.getpwnam(PG_OS_USER)
        os.chown(path, pg.pw_uid, pg.pw_gid)
    return path


class World:
    def __init__(self, base: Path):
        self.base = base
        self.key = base64.b64encode(os.urandom(32)).decode()

    def ctx(self) -> FleetContext:
        return FleetContext(load_config(self.config_path))

    def sql(self, query: str):
        return self.cluster.execute(query, dbname="app")

    def switch_and_wait(self, timeout: float = 60) -> None:
        last = self.sql("SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0]
        self.sql("SELECT pg_switch_wal()")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            archived = self.cluster.execute("SELECT last_archived_wal FROM pg_stat_archiver")[0][0]
            if archived and archived >= last:
                return
            time.sleep(0.2)
        pytest.fail(f"{last} not archived: {self.cluster.log_file.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    base = tmp_path_factory.mktemp("pitr")
    w = World(base)
    store = _for_server(base / "store")
    spool = _for_server(base / "server-tmp")
    conf = base / "conf"
    conf.mkdir(mode=0o755)
    w.cluster = LocalCluster(base / "pg")
    w.config_path = conf / "dbops.yaml"
    w.config_path.write_text(yaml.safe_dump({
        "storage": {"url": f"file://{store}"}, "encryption": {"key_env": KEY_ENV},
        "targets": {"app": {"dsn": w.cluster.dsn("app"), "wal": {"prefetch": 4}}}}))
    os.chmod(w.config_path, 0o644)
    w.cluster.extra_conf = "\n".join([
        "archive_mode = on",
        f"archive_command = '{sys.executable} -m dbops_pipelines.cli_wal wal-push %p --target app'"])
    w.cluster.env = {"DBOPS_CONFIG": str(w.config_path), KEY_ENV: w.key, "TMPDIR": str(spool)}
    w.cluster.start()
    w.cluster.create_database("app")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, w.key)
        mp.setenv("DBOPS_CONFIG", str(w.config_path))
        mp.setenv("TMPDIR", str(_for_server(base / "fetch-tmp")))     # the recovered server's spool
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
    w.cluster.stop()


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
