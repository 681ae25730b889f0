"""Base backups (docs/pitr.md#base-backups) on a real cluster: taken through the encrypted store,
listed, restored into a new directory that a server then starts on with the rows written before
the backup (and none after), checked with pg_verifybackup; and every failure leaves nothing:
a killed pg_basebackup, a tampered object, a non-empty directory, a role without REPLICATION,
tablespaces. One round trip on SeaweedFS through the `dbops basebackup` command."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from psycopg import sql

from dbops_pipelines.config import FleetConfig
from dbops_pipelines.context import FleetContext
from dbops_pipelines.errors import BackupFailed, IntegrityError, RestoreFailed
from dbops_pipelines.localdev.pgcluster import LocalCluster
from dbops_pipelines.wal.basebackup import (data_key, find_base_backup, list_base_backups, manifest_key,
                                            restore_base_backup, take_base_backup, verify_base_backup_files)
from dbops_pipelines.wal.naming import parse_lsn
from dbops_pipelines_tests.conftest import KEY_ENV, scratch_database

ROWS = 5000
AS_ROOT = os.geteuid() == 0


def _ctx(cluster: LocalCluster, store_dir: Path, dsn: str | None = None) -> FleetContext:
    cfg = FleetConfig.model_validate({
        "storage": {"url": f"file://{store_dir}"}, "encryption": {"key_env": KEY_ENV},
        "defaults": {"connect_retries": 0}, "targets": {"app": {"dsn": dsn or cluster.dsn()}}})
    return FleetContext(cfg)


@pytest.fixture(scope="module")
def source(pg_cluster, tmp_path_factory):
    """A database with ROWS rows on the session cluster, the key in the environment, and one base
    backup taken into a local store; a row written after it."""
    with pytest.MonkeyPatch.context() as mp, scratch_database(pg_cluster, "bb") as db:
        import base64
        mp.setenv(KEY_ENV, base64.b64encode(os.urandom(32)).decode())
        pg_cluster.execute("CREATE TABLE items (id int PRIMARY KEY, note text)", db)
        pg_cluster.execute(f"INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, {ROWS}) g", db)
        ctx = _ctx(pg_cluster, tmp_path_factory.mktemp("bbstore"))
        manifest = take_base_backup(ctx, "app")
        pg_cluster.execute("INSERT INTO items VALUES (0, 'written after the base backup')", db)
        yield {"ctx": ctx, "db": db, "manifest": manifest, "cluster": ctx.config.server_of("app")}


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_mode, p.read_bytes() if p.is_file() else None) for p in root.rglob("*")}


def test_take_list_restore_start_and_verify(source, pg_cluster, tmp_path):
    ctx, m = source["ctx"], source["manifest"]
    sysid = pg_cluster.execute("SELECT system_identifier FROM pg_control_system()")[0][0]
    assert m.system_identifier == str(sysid) and m.cluster == source["cluster"] and m.target == "app"
    assert m.timeline == m.stop_timeline == 1 and parse_lsn(m.start_lsn) < parse_lsn(m.stop_lsn)
    assert m.start_time <= m.stop_time and m.start_time_source == "backup_label"
    assert len(m.backup_manifest_sha256) == 64 and m.backup_manifest_bytes > 0
    assert m.stored_bytes < m.raw_bytes and m.compression == "zstd-1" and m.key_id == ctx.write_key.key_id
    assert m.pg_basebackup_version.startswith("15.") and m.object_key.endswith("/base.tar.zst.aes")
    assert m.backup_id.startswith(source["cluster"].replace(":", "_") + "-")

    [entry] = list_base_backups(ctx, source["cluster"])
    assert entry.valid and entry.backup_id == m.backup_id and entry.manifest == m
    assert find_base_backup(ctx, None, m.backup_id).manifest == m
    assert entry.to_dict()["stop_lsn"] == m.stop_lsn

    (tmp_path / "restored").mkdir()
    restored = restore_base_backup(ctx, m, tmp_path / "restored" / "data")
    data = restored.data_dir
    assert stat_mode(data) == 0o700 and (data / "backup_label").is_file() and restored.files > 900
    assert hashlib.sha256((data / "backup_manifest").read_bytes()).hexdigest() == m.backup_manifest_sha256
    if AS_ROOT:
        pg_uid = pwd.getpwnam("postgres").pw_uid
        assert all(p.lstat().st_uid == pg_uid for p in [data, *data.rglob("*")])
    check = verify_base_backup_files(data)
    assert check.ok, check.messages

    # A -X fetch backup starts on its own: crash recovery from backup_label with the WAL it holds.
    server = LocalCluster(tmp_path / "restored")
    server.start()
    try:
        assert server.execute("SELECT count(*), min(id) FROM items", source["db"]) == [(ROWS, 1)]
        assert server.execute("SELECT system_identifier FROM pg_control_system()")[0][0] == sysid
    finally:
        server.stop()


def stat_mode(p: Path) -> int:
    return p.stat().st_mode & 0o777


def _kill_pg_basebackup() -> int:
    killed = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if cmd and cmd[0].endswith(b"pg_basebackup") and ppid == os.getpid():
            os.kill(int(proc.name), signal.SIGKILL)
            killed += 1
    return killed


def test_killed_pg_basebackup_leaves_nothing(source, pg_cluster, tmp_path):
    ctx = _ctx(pg_cluster, tmp_path / "store")
    killed: list[int] = []
    seen: list[int] = []

    def on_progress(p):
        seen.append(p.raw_bytes)
        if not killed:
            killed.append(_kill_pg_basebackup())

    with pytest.raises(BackupFailed, match="pg_basebackup of app was killed by signal 9; nothing was stored"):
        take_base_backup(ctx, "app", progress=on_progress, progress_interval=0)
    assert killed == [1] and 0 < seen[0] < source["manifest"].raw_bytes   # mid-stream
    assert ctx.store.list() == [] and not list((tmp_path / "store").rglob("*.partial"))
    assert list_base_backups(ctx, source["cluster"]) == []


def test_restore_into_a_non_empty_directory_is_refused(source, tmp_path):
    into = tmp_path / "busy"
    into.mkdir()
    (into / "keep.txt").write_text("precious")
    (into / "sub").mkdir()
    before = _tree(into)
    with pytest.raises(RestoreFailed, match="is not empty"):
        restore_base_backup(source["ctx"], source["manifest"], into)
    assert _tree(into) == before
    with pytest.raises(RestoreFailed, match="is not a directory"):
        restore_base_backup(source["ctx"], source["manifest"], into / "keep.txt")
    assert _tree(into) == before


def test_tampered_object_is_refused_and_the_extraction_removed(source, pg_cluster, tmp_path):
    ctx = _ctx(pg_cluster, tmp_path / "store")
    m = take_base_backup(ctx, "app")
    obj = Path(ctx.store.location(m.object_key).removeprefix("file://"))
    with open(obj, "r+b") as fh:          # one byte flipped at 70% of the stored object
        fh.seek(int(m.stored_bytes * 0.7))
        b = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([b[0] ^ 0x01]))

    for into, existed in ((tmp_path / "new", False), (tmp_path / "empty", True)):
        if existed:
            into.mkdir()
        extracted: list[int] = []

        def on_progress(p, into=into):
            extracted.append(sum(1 for _ in into.rglob("*")))

        with pytest.raises(IntegrityError, match="failed authentication"):
            restore_base_backup(ctx, m, into, progress=on_progress, progress_interval=0)
        assert max(extracted) > 100          # it had extracted files before the bad record came
        assert (into.is_dir() and not any(into.iterdir())) if existed else not into.exists()

    # A manifest altered in the store is listed with its problem, never dropped or trusted.
    key = manifest_key(m.cluster, m.backup_id)
    path = Path(ctx.store.location(key).removeprefix("file://"))
    path.write_bytes(path.read_bytes().replace(b'"timeline": 1', b'"timeline": 2'))
    [entry] = list_base_backups(ctx, m.cluster)
    assert entry.state == "unknown" and entry.manifest is None and "altered" in entry.problem
    with pytest.raises(IntegrityError, match="altered"):
        find_base_backup(ctx, m.cluster, m.backup_id)
    assert ctx.store.stat(data_key(m.cluster, m.backup_id)) is not None   # listing deletes nothing


def test_a_role_without_replication_is_named(pg_cluster, tmp_path, backup_key):
    role = f"bb_norepl_{uuid.uuid4().hex[:8]}"
    pg_cluster.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        ctx = _ctx(pg_cluster, tmp_path / "store", pg_cluster.dsn(user=role))
        with pytest.raises(BackupFailed, match=f"role '{role}' of app lacks the REPLICATION privilege") as err:
            take_base_backup(ctx, "app")
        assert f"ALTER ROLE {role} REPLICATION" in err.value.hint and "pg_hba.conf" in err.value.hint
        assert ctx.store.list() == []
    finally:
        pg_cluster.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_tablespaces_are_refused_clearly(pg_cluster, tmp_path, backup_key):
    name = f"bbts_{uuid.uuid4().hex[:8]}"
    location = pg_cluster.base_dir / name
    location.mkdir(mode=0o700)
    if AS_ROOT:
        pg = pwd.getpwnam("postgres")
        os.chown(location, pg.pw_uid, pg.pw_gid)
    pg_cluster.execute(sql.SQL("CREATE TABLESPACE {} LOCATION {}").format(sql.Identifier(name), sql.Literal(str(location))))
    try:
        ctx = _ctx(pg_cluster, tmp_path / "store")
        with pytest.raises(BackupFailed, match=f"has tablespaces besides the default ones: {name}") as err:
            take_base_backup(ctx, "app")
        assert "pg_default" in err.value.hint
        assert ctx.store.list() == []
    finally:
        pg_cluster.execute(sql.SQL("DROP TABLESPACE {}").format(sql.Identifier(name)))
        shutil.rmtree(location, ignore_errors=True)


# Runs `dbops` with `basebackup` registered (a no-op once cli.py registers it itself).
_DBOPS = """
import argparse, sys
from dbops_pipelines import cli, cli_basebackup
_build = cli.build_parser
def build():
    p = _build()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    if "basebackup" not in sub.choices:
        cli_basebackup.add_parsers(sub)
    return p
cli.build_parser = build
sys.exit(cli.main(sys.argv[1:]))
"""


def dbops(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _DBOPS, *args], capture_output=True, text=True, timeout=300)


def test_s3_round_trip_through_the_command(s3_env, s3_bucket, write_config, pg_cluster, tmp_path):
    write_config({"app": {"dsn": pg_cluster.dsn(), "cluster": "main"}}, clusters={"main": {}},
                 storage={"url": f"s3://{s3_bucket}/pitr", "s3_endpoint_url": s3_env.endpoint_url})
    took = dbops("basebackup", "take", "app")
    assert took.returncode == 0, took.stderr
    backup_id = took.stdout.strip()
    assert backup_id.startswith("main-") and "complete" in took.stderr and "Traceback" not in took.stderr

    listed = dbops("basebackup", "list", "app", "--json")
    assert listed.returncode == 0, listed.stderr
    [entry] = json.loads(listed.stdout)
    assert (entry["id"], entry["cluster"], entry["status"], entry["target"]) == (backup_id, "main", "valid", "app")
    assert entry["location"].startswith(f"s3://{s3_bucket}/pitr/wal/main/base/{backup_id}/")

    into = tmp_path / "restored"
    restored = dbops("basebackup", "restore", backup_id, "--into", str(into))
    assert restored.returncode == 0, restored.stderr
    assert "backup successfully verified" not in restored.stdout and "matches backup_manifest" in restored.stderr
    assert (into / "PG_VERSION").read_text().strip() == "15" and stat_mode(into) == 0o700

    again = dbops("basebackup", "restore", backup_id, "--into", str(into))
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert f"error: {into} is not empty" in again.stderr and "what to do:" in again.stderr
    missing = dbops("basebackup", "restore", "main-20200101T000000Z-abcd", "--into", str(tmp_path / "x"))
    assert missing.returncode == 1 and "not found" in missing.stderr and not (tmp_path / "x").exists()


def test_tar_watch_reads_headers_fed_in_any_pieces():
    import io
    import random
    import tarfile

    from dbops_pipelines.wal.basebackup.tarwatch import TarWatch, label_time as _label_time

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in (("backup_label", b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n"),
                           ("base/1/" + "x" * 150, os.urandom(3000)),          # a long name: a pax header
                           ("global/pg_control", (7714453742357928300).to_bytes(8, "little") + (1300).to_bytes(4, "little")
                            + bytes(8180)),
                           ("pg_wal/000000010000000000000002", bytes(70000)),
                           ("backup_manifest", b'{"WAL-Ranges": [\n{ "Timeline": 1, "Start-LSN": "0/2000028", '
                                               b'"End-LSN": "0/2000100" }\n],\n"Manifest-Checksum": "ab"}\n')):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    watch, pos, rng = TarWatch(clock=lambda: 42.0), 0, random.Random(7)
    while pos < len(raw):
        step = rng.choice([1, 7, 511, 512, 513, 4096, 100000])
        watch.feed(raw[pos:pos + step])
        pos += step
    assert watch.ended and watch.files == 5 and watch.first_wal_at == 42.0
    assert watch.backup_label.startswith(b"START WAL LOCATION: 0/2000028") and watch.manifest_seen
    assert watch.manifest_sha.hexdigest() == hashlib.sha256(raw[raw.index(b'{"WAL'):].split(b"\0")[0]).hexdigest()
    assert int.from_bytes(watch.pg_control[:8], "little") == 7714453742357928300

    with pytest.raises(BackupFailed, match="not a tar stream"):
        TarWatch().feed(b"x" * 512)
    assert _label_time("2026-12-01 21:40:35 UTC").isoformat() == "2026-12-01T21:40:35+00:00"
    assert _label_time("2026-12-01 21:40:35 +03").isoformat() == "2026-12-01T18:40:35+00:00"
    assert _label_time("2026-12-01 21:40:35 CET").isoformat() == "2026-12-01T20:40:35+00:00"
    assert _label_time("2026-07-01 21:40:35 CEST") is None      # an abbreviation zoneinfo does not know
