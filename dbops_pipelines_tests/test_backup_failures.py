"""Every failure is loud and loses nothing: non-zero exit or exception with a message that says
what to do, no partial object, nothing listed as a valid backup. All on real services."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from dbops_pipelines import fleet
from dbops_pipelines.context import FleetContext
from dbops_pipelines.backup.catalog import find_backup, list_backups
from dbops_pipelines.backup.engine import run_backup
from dbops_pipelines.config import load_config
from dbops_pipelines.errors import BackupFailed, ConfigError, EncryptionKeyError, IntegrityError, RestoreFailed, StorageError
from dbops_pipelines.localdev.seaweed import SeaweedServer
from dbops_pipelines.restore import restore_backup
from dbops_pipelines.storage.local import LocalStore
from dbops_pipelines_tests.conftest import KEY_ENV


def dbops(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dbops_pipelines.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def kill_pg_dump() -> int:
    """SIGKILL every pg_dump that is a child of this test process."""
    killed = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if cmd and cmd[0].endswith(b"pg_dump") and ppid == os.getpid():
            os.kill(int(proc.name), signal.SIGKILL)
            killed += 1
    return killed


def assert_nothing_stored(store) -> None:
    assert store.list() == [], [o.key for o in store.list()]


def test_unreachable_database_fails_after_retries(write_config, tmp_path, monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "hunter2-secret")
    write_config({"app": "postgresql://dbops@127.0.0.1:1/app"})
    result = dbops("backup", "app")
    assert result.returncode == 1
    assert "cannot connect to app" in result.stderr and "after 2 attempts" in result.stderr
    assert "what to do: check that the server is up" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
    assert_nothing_stored(LocalStore(tmp_path / "store"))


def test_missing_key_fails_before_dumping(write_config, sample_app, tmp_path, monkeypatch):
    write_config({"app": sample_app["dsn"]})
    env = {k: v for k, v in os.environ.items() if k != KEY_ENV}
    result = dbops("backup", "app", env=env)
    assert result.returncode == 1
    assert f"${KEY_ENV} is not set" in result.stderr and "dbops keygen" in result.stderr
    assert not (tmp_path / "store").exists()  # not even the store was touched


def test_malformed_key_is_rejected(write_config, sample_app, monkeypatch):
    cfg = load_config(write_config({"app": sample_app["dsn"]}))
    monkeypatch.setenv(KEY_ENV, "c2hvcnQ=")  # base64 of b"short"
    with pytest.raises(EncryptionKeyError, match="5 bytes, expected 32"):
        fleet.backup_target(FleetContext(cfg), "app")


def test_pg_dump_killed_mid_stream(write_config, sample_app, backup_key, tmp_path):
    cfg = load_config(write_config({"app": sample_app["dsn"]}))
    store = LocalStore(tmp_path / "store")
    killed = []

    def on_progress(p):
        if not killed:
            killed.append(kill_pg_dump())

    with pytest.raises(BackupFailed, match="pg_dump of app was killed by signal 9; nothing was stored"):
        run_backup("app", sample_app["dsn"], store, backup_key, fleet.backup_options(FleetContext(cfg), "app"),
                   progress=on_progress, progress_interval=0)
    assert killed == [1]
    assert_nothing_stored(store)
    assert not list(store.root.rglob("*.partial"))


def test_s3_unavailable_mid_upload(tmp_path, sample_app, backup_key, write_config, monkeypatch):
    server = SeaweedServer(tmp_path / "s3", "dbops-test-access", "s3-secret-for-this-test")
    server.start()
    try:
        server.create_bucket("backups")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
        cfg = load_config(write_config({"app": sample_app["dsn"]},
                                       storage={"url": "s3://backups/p", "s3_endpoint_url": server.endpoint_url}))
        from dbops_pipelines.storage.s3 import S3Store

        store = S3Store("backups", "p", endpoint_url=server.endpoint_url, max_attempts=2)
        stopped = []

        def on_progress(p):
            if not stopped:
                server.kill()  # the store dies after the upload has started
                stopped.append(True)

        with pytest.raises(StorageError) as err:
            run_backup("app", sample_app["dsn"], store, backup_key, fleet.backup_options(FleetContext(cfg), "app"),
                       progress=on_progress, progress_interval=0)
        assert "check that the store is reachable" in str(err.value)
        assert "s3-secret-for-this-test" not in str(err.value)
        server.restart()
        # With the store down the lease could not be removed either; a lease alone is no backup
        # (listed as "incomplete" after a day, then swept by retention).
        leftovers = [o.key for o in FleetContext(cfg).store.list()]
        assert all(k.endswith("/writing.lease") for k in leftovers), leftovers
        assert all(e.state in ("writing", "incomplete") for e in list_backups(FleetContext(cfg).store, FleetContext(cfg).read_keys))
    finally:
        server.stop()


def test_pg_dump_older_than_server_is_refused_up_front(write_config, sample_app, tmp_path, monkeypatch):
    # Only PostgreSQL 15 is installed here, so an older client is simulated: a pg_dump whose
    # --version reports 14 (and which would fail loudly if it were ever run to dump).
    bin_dir = tmp_path / "oldbin"
    bin_dir.mkdir()
    fake = bin_dir / "pg_dump"
    fake.write_text('#!/bin/sh\n[ "$1" = "--version" ] && echo "pg_dump (PostgreSQL) 14.12" && exit 0\nexit 99\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    write_config({"app": sample_app["dsn"]}, defaults={"pg_bin_dir": str(bin_dir), "connect_retries": 0})
    result = dbops("backup", "app")
    assert result.returncode == 1
    assert "pg_dump 14.12 is older than the server (PostgreSQL 15)" in result.stderr
    assert "postgresql-client-15" in result.stderr
    assert_nothing_stored(LocalStore(tmp_path / "store"))


def test_unknown_table_is_refused_before_dumping(write_config, sample_app, tmp_path):
    write_config({"app": sample_app["dsn"]})
    result = dbops("backup", "app", "--table", "public.nope")
    assert result.returncode == 1 and "table(s) not found in the database: public.nope" in result.stderr
    assert_nothing_stored(LocalStore(tmp_path / "store"))


def test_password_in_config_dsn_is_rejected_without_echoing_it(tmp_path):
    path = tmp_path / "dbops.yaml"
    path.write_text("targets:\n  app:\n    dsn: postgresql://u:topsecretpw@h/app\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "PGPASSWORD" in str(err.value) and "topsecretpw" not in str(err.value)


@pytest.fixture
def stored_backup(write_config, sample_app):
    cfg = load_config(write_config({"app": sample_app["dsn"]}))
    manifest = fleet.backup_target(FleetContext(cfg), "app")
    return cfg, manifest, Path(manifest.location.removeprefix("file://"))


def _tables_in(pg_cluster, db):
    return pg_cluster.execute("SELECT count(*) FROM pg_tables WHERE schemaname='public'", dbname=db)[0][0]


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "truncate_at_record"])
def test_damaged_object_restores_nothing(stored_backup, damage, pg_cluster, fresh_db):
    cfg, manifest, path = stored_backup
    data = bytearray(path.read_bytes())
    if damage == "flip_byte":
        data[len(data) * 2 // 3] ^= 0x01
    elif damage == "truncate":
        del data[len(data) - 100:]
    else:  # cut exactly before the final record: every record left is whole and authentic
        from dbops_pipelines.backup.crypto import HEADER_LEN, NONCE_LEN
        pos = last = HEADER_LEN
        while pos < len(data):
            last = pos
            pos += 4 + NONCE_LEN + int.from_bytes(data[pos:pos + 4], "big")
        del data[last:]
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as err:
        restore_backup(FleetContext(cfg).store, manifest, FleetContext(cfg).read_keys, pg_cluster.dsn(fresh_db))
    assert manifest.backup_id in str(err.value)
    assert _tables_in(pg_cluster, fresh_db) == 0  # the single transaction was rolled back
    result = dbops("check", manifest.backup_id)
    assert result.returncode == 1 and manifest.backup_id in result.stderr


def test_wrong_key_names_backup_and_key_id(stored_backup, pg_cluster, fresh_db, monkeypatch):
    cfg, manifest, _ = stored_backup
    monkeypatch.setenv(KEY_ENV, "A" * 43 + "=")  # a valid but different 32-byte key
    result = dbops("restore", manifest.backup_id, "--to", pg_cluster.dsn(fresh_db))
    assert result.returncode == 1
    assert manifest.backup_id in result.stderr and manifest.key_id in result.stderr
    assert "previous_key_envs" in result.stderr
    assert _tables_in(pg_cluster, fresh_db) == 0


def test_rotated_key_still_reads_old_backups(stored_backup, write_config, sample_app, pg_cluster, fresh_db, monkeypatch):
    _, manifest, _ = stored_backup
    monkeypatch.setenv("OLD_KEY", os.environ[KEY_ENV])
    monkeypatch.setenv(KEY_ENV, "B" * 43 + "=")
    cfg = load_config(write_config({"app": sample_app["dsn"]}, encryption={"key_env": KEY_ENV, "previous_key_envs": ["OLD_KEY"]}))
    restore_backup(FleetContext(cfg).store, manifest, FleetContext(cfg).read_keys, pg_cluster.dsn(fresh_db))
    assert _tables_in(pg_cluster, fresh_db) == len(manifest.table_rows)
    newer = fleet.backup_target(FleetContext(cfg), "app")
    assert newer.key_id != manifest.key_id


def test_restore_into_non_empty_database_fails_and_rolls_back(stored_backup, pg_cluster, fresh_db):
    cfg, manifest, _ = stored_backup
    pg_cluster.execute("CREATE TABLE vendors (id int)", dbname=fresh_db)
    with pytest.raises(RestoreFailed) as err:
        restore_backup(FleetContext(cfg).store, manifest, FleetContext(cfg).read_keys, pg_cluster.dsn(fresh_db))
    assert "rolled back" in str(err.value) and "--clean" in str(err.value)
    assert _tables_in(pg_cluster, fresh_db) == 1


def test_backup_role_without_bypassrls_gets_the_real_reason(write_config, sample_app, pg_cluster, tmp_path):
    pg_cluster.execute("DO $$ BEGIN CREATE ROLE dbops_reader LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    pg_cluster.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO dbops_reader", dbname="app")
    dsn = sample_app["dsn"].replace("postgres@", "dbops_reader@")
    write_config({"app": dsn})
    try:
        result = dbops("backup", "app")
    finally:  # the sample database is shared by the session: leave it as it was
        pg_cluster.execute("REVOKE SELECT ON ALL TABLES IN SCHEMA public FROM dbops_reader", dbname="app")
    assert result.returncode == 1
    assert "the backup role cannot read public." in result.stderr and "row-level security" in result.stderr
    assert "BYPASSRLS" in result.stderr and "import the requested snapshot" not in result.stderr
    assert_nothing_stored(LocalStore(tmp_path / "store"))


def test_restore_selection_and_password_handling_without_running_anything():
    from dbops_pipelines.restore import _password_to_env, pg_restore_command
    from dbops_pipelines.table_selection import TableSelection

    # A table selection is an exact list of archive entries (test_identifiers.py), never name patterns.
    selection = TableSelection([7, 3])
    cmd = pg_restore_command("pg_restore", "d", selection, 1, False, None)
    assert f"--use-list={selection.list_path}" in cmd and "--single-transaction" in cmd
    assert not [a for a in cmd if a.startswith(("--schema", "--table"))]
    with open(selection.list_path) as fh:
        assert fh.read() == "7\n3\n"
    dsn, env = _password_to_env("postgresql://u:s3cret@h:5432/db")
    assert "s3cret" not in dsn and env["PGPASSWORD"] == "s3cret"


def test_altered_manifest_is_refused(stored_backup, pg_cluster, fresh_db):
    import json as _json

    from dbops_pipelines.backup.manifest import manifest_key

    cfg, manifest, _ = stored_backup
    store = FleetContext(cfg).store
    path = manifest_key("app", manifest.backup_id)
    stored = store.get_bytes(path)
    # someone "fixes" a count in the store
    store.put_bytes(path, re.sub(rb'("public.users": )(\d+)', lambda m: m[1] + str(int(m[2]) + 1).encode(), stored), overwrite=True)
    assert store.get_bytes(path) != stored
    with pytest.raises(IntegrityError, match=f"the manifest of backup {manifest.backup_id} has been altered"):
        find_backup(store, FleetContext(cfg).read_keys, manifest.backup_id)
    assert _tables_in(pg_cluster, fresh_db) == 0
    result = dbops("check", manifest.backup_id)
    assert result.returncode == 1 and "has been altered" in result.stderr
