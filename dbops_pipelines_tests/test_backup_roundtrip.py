"""Backup -> store -> restore on a real cluster, local and S3 stores: every row comes back.

Source and restored databases are compared by dbcompare, which reads the catalogs and digests
the rows itself: none of the product's own fingerprint or comparison code judges its output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from dbops_pipelines import fleet
from dbops_pipelines.context import FleetContext
from dbops_pipelines.backup.catalog import find_backup, list_backups
from dbops_pipelines.backup.integrity import check_backup
from dbops_pipelines.backup.snapshot import schema_fingerprint
from dbops_pipelines.config import load_config
from dbops_pipelines.errors import ConfigError, IntegrityError
from dbops_pipelines.interrupts import Terminated, sigterm_as_interrupt
from dbops_pipelines.restore import restore_backup
from dbops_pipelines_tests.dbcompare import (SCHEMA_SECTIONS, assert_same_database, changed_objects, describe,
                                             differences, table_digests, tamper_manifest)


def dbops(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dbops_pipelines.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(params=["local", "s3"])
def fleet_cfg(request, write_config, sample_app):
    if request.param == "local":
        return load_config(write_config({"app": sample_app["dsn"]}))
    seaweed = request.getfixturevalue("s3_env")
    bucket = request.getfixturevalue("s3_bucket")
    return load_config(write_config({"app": sample_app["dsn"]},
                                    storage={"url": f"s3://{bucket}/nightly", "s3_endpoint_url": seaweed.endpoint_url}))


def test_full_backup_restores_every_row_exactly(fleet_cfg, sample_app, pg_cluster, fresh_db):
    manifest = fleet.backup_target(FleetContext(fleet_cfg), "app")
    source = table_digests(sample_app["dsn"])

    # The manifest's counts are the exact counts of the data, taken in the dump's snapshot.
    assert manifest.table_rows == {t: n for t, (n, _) in source.items()}
    assert manifest.table_rows == sample_app["counts"]
    assert manifest.stored_bytes < manifest.raw_bytes
    assert manifest.key_id == FleetContext(fleet_cfg).write_key.key_id

    store = FleetContext(fleet_cfg).store
    [entry] = list_backups(store, FleetContext(fleet_cfg).read_keys, "app")
    assert entry.valid and entry.backup_id == manifest.backup_id
    report = check_backup(store, manifest, FleetContext(fleet_cfg).read_keys)
    assert set(report.tables_with_data) == set(manifest.table_rows)

    dest = pg_cluster.dsn(fresh_db)
    restore_backup(store, manifest, FleetContext(fleet_cfg).read_keys, dest)
    assert_same_database(sample_app["dsn"], dest)
    # Apart from that comparison: the manifest's own record of the schema, which verification
    # compares restored copies with, describes what was restored.
    with psycopg.connect(dest) as conn:
        assert schema_fingerprint(conn) == manifest.schema_fingerprint
    assert manifest.schema_fingerprint["tables"]["public.requisitions"] == "r rls forced"


def test_the_comparison_sees_one_changed_row_and_each_changed_object(write_config, sample_app, pg_cluster, fresh_db):
    """dbcompare must be able to fail: a restored copy that equals its source, then differs from it
    by one row (same count), one sequence value, one policy, one index."""
    ctx = FleetContext(load_config(write_config({"app": sample_app["dsn"]})))
    manifest = fleet.backup_target(ctx, "app")
    dest = pg_cluster.dsn(fresh_db)
    restore_backup(ctx.store, manifest, ctx.read_keys, dest)
    source = describe(sample_app["dsn"])
    assert differences(source, describe(dest)) == []

    with psycopg.connect(dest, autocommit=True) as conn:
        conn.execute("UPDATE public.vendors SET name = name || '.' WHERE id = (SELECT min(id) FROM public.vendors)")
    changed = describe(dest)
    assert changed_objects(source, changed) == [("rows", "public.vendors")]
    assert changed["rows"]["public.vendors"][0] == source["rows"]["public.vendors"][0]  # the same count
    [line] = differences(source, changed)
    assert line.startswith("rows: public.vendors differs: expected (")

    with psycopg.connect(dest, autocommit=True) as conn:
        conn.execute("SELECT setval(pg_get_serial_sequence('public.users', 'id'), 1)")
        conn.execute("DROP POLICY requisitions_tenant_isolation ON public.requisitions")
        conn.execute("DROP INDEX public.users_email_lower_idx")
    assert changed_objects(source, describe(dest)) == [
        ("indexes", "public.users_email_lower_idx"),
        ("policies", "public.requisitions.requisitions_tenant_isolation"),
        ("rows", "public.vendors"),
        ("sequence_values", "public.users_id_seq"),
    ]
    with pytest.raises(AssertionError, match="4 difference"):
        assert_same_database(sample_app["dsn"], dest)


def test_parallel_restore_and_clean_replace(write_config, sample_app, pg_cluster, fresh_db):
    cfg = load_config(write_config({"app": sample_app["dsn"]}))
    manifest = fleet.backup_target(FleetContext(cfg), "app")
    store, keys, dest = FleetContext(cfg).store, FleetContext(cfg).read_keys, pg_cluster.dsn(fresh_db)
    restore_backup(store, manifest, keys, dest, jobs=2)
    assert_same_database(sample_app["dsn"], dest)
    with psycopg.connect(dest, autocommit=True) as conn:
        conn.execute("DELETE FROM audit_events")
    assert changed_objects(describe(sample_app["dsn"]), describe(dest)) == [("rows", "public.audit_events")]
    restore_backup(store, manifest, keys, dest, clean=True)
    assert_same_database(sample_app["dsn"], dest)


def test_schema_only_and_selected_tables(write_config, sample_app, pg_cluster, fresh_db):
    cfg = load_config(write_config({"app": sample_app["dsn"]}))
    schema = fleet.backup_target(FleetContext(cfg), "app", kind="schema")
    assert schema.kind == "schema" and schema.table_rows == {}
    picked = fleet.backup_target(FleetContext(cfg), "app", kind="tables", tables=("public.vendors", "tenants"))
    assert picked.table_rows == {t: sample_app["counts"][t] for t in ("public.tenants", "public.vendors")}

    store, keys = FleetContext(cfg).store, FleetContext(cfg).read_keys
    dest = pg_cluster.dsn(fresh_db)
    restore_backup(store, schema, keys, dest)
    assert_same_database(sample_app["dsn"], dest, SCHEMA_SECTIONS)   # every object, no rows
    restored = describe(dest)
    assert restored["rows"].keys() == describe(sample_app["dsn"])["rows"].keys()
    assert all(n == 0 for n, _ in restored["rows"].values())
    assert set(restored["sequence_values"].values()) == {"never called"}
    # Selected-table restore into an empty database: that table, its rows, nothing else.
    pg_cluster.create_database(fresh_db + "_one")
    try:
        one = pg_cluster.dsn(fresh_db + "_one")
        restore_backup(store, picked, keys, one, tables=["public.vendors"])
        assert table_digests(one) == {"public.vendors": table_digests(sample_app["dsn"])["public.vendors"]}
    finally:
        pg_cluster.drop_database(fresh_db + "_one", force=True)


def test_cli_backup_list_restore(write_config, sample_app, pg_cluster, fresh_db):
    write_config({"app": sample_app["dsn"]})
    made = dbops("backup", "app")
    assert made.returncode == 0, made.stderr
    backup_id = made.stdout.strip()
    assert backup_id.startswith("app-") and "\n" not in backup_id
    assert "backup app: " in made.stderr and " read, " in made.stderr and "/s" in made.stderr  # progress

    listed = dbops("backups", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [item] = json.loads(listed.stdout)
    for field in ("id", "target", "kind", "status", "started_at", "finished_at", "size_bytes", "location", "sha256"):
        assert item[field] not in (None, ""), field
    assert item["id"] == backup_id and item["status"] == "valid" and item["kind"] == "full"

    checked = dbops("check", backup_id)
    assert checked.returncode == 0 and "intact" in checked.stdout, checked.stderr

    restored = dbops("restore", backup_id, "--to", pg_cluster.dsn(fresh_db), "--jobs", "2")
    assert restored.returncode == 0, restored.stderr
    assert f"restore {backup_id}: " in restored.stderr  # progress
    assert_same_database(sample_app["dsn"], pg_cluster.dsn(fresh_db))

    plan = dbops("retention", "--dry-run", "--json")
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["delete_count"] == 0


def test_excluded_table_data_keeps_schema_not_rows(write_config, sample_app, pg_cluster, fresh_db):
    cfg = load_config(write_config({"app": {"dsn": sample_app["dsn"], "backup": {"exclude_table_data": ["public.audit_events"]}}}))
    manifest = fleet.backup_target(FleetContext(cfg), "app")
    assert "public.audit_events" not in manifest.table_rows
    restore_backup(FleetContext(cfg).store, manifest, FleetContext(cfg).read_keys, pg_cluster.dsn(fresh_db))
    got = table_digests(pg_cluster.dsn(fresh_db))
    assert got["public.audit_events"][0] == 0
    assert got["public.users"] == table_digests(sample_app["dsn"])["public.users"]


# --- check_backup: pg_restore --list through the one process runner -----------------------------

@pytest.fixture
def stored_app(write_config, sample_app):
    cfg = load_config(write_config({"app": sample_app["dsn"]}))
    ctx = FleetContext(cfg)
    return cfg, ctx, fleet.backup_target(ctx, "app")


def test_check_picks_pg_restore_by_the_archives_pg_dump_version(stored_app):
    cfg, ctx, manifest = stored_app
    tamper_manifest(cfg, manifest, lambda raw: raw.update(pg_dump_version="16.2"))  # the server stays 15
    newer = find_backup(ctx.store, ctx.read_keys, manifest.backup_id).manifest
    assert newer.pg_dump_version == "16.2" and newer.server_version.startswith("15")
    with pytest.raises(ConfigError, match=rf"pg_restore 15\.\d+ \(.*\) is older than the archive of backup "
                                          rf"{manifest.backup_id} \(written by pg_dump 16\.2\)") as caught:
        check_backup(ctx.store, newer, ctx.read_keys)
    assert "postgresql-client-16" in caught.value.hint  # what to install
    assert not isinstance(caught.value, IntegrityError)  # the environment's fault, not the backup's


def test_check_refuses_a_pg_bin_dir_older_than_the_archive(stored_app, tmp_path):
    _, ctx, manifest = stored_app
    old = tmp_path / "pg14"
    old.mkdir()
    fake = old / "pg_restore"  # claims 14.9; anything else it is asked fails loudly
    fake.write_text('#!/bin/sh\n[ "$1" = "--version" ] && echo "pg_restore (PostgreSQL) 14.9" && exit 0\nexit 99\n')
    fake.chmod(0o755)
    with pytest.raises(ConfigError, match=r"pg_restore 14\.9 .* is older than the archive .* must be version 15 or newer"):
        check_backup(ctx.store, manifest, ctx.read_keys, pg_bin_dir=str(old))


def _children(program: str) -> list[int]:
    """Live (not zombie) children of this process running ``program``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or not (entry / "cmdline").read_bytes().split(b"\0")[0].endswith(program.encode()):
                continue
            state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
        except OSError:
            continue
        if int(ppid) == os.getpid() and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


class _SignalledStore:
    """The real store, except that reading the data object sends this process ``signum`` after
    its first chunk (pg_restore is running by then) and waits for the handler to act."""

    def __init__(self, inner, signum: int):
        self._inner, self._signum, self.running_then = inner, signum, []

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def get(self, key: str, chunk_size: int = 1 << 20):
        chunks = self._inner.get(key, chunk_size=64 << 10)
        yield next(iter(chunks))
        self.running_then = _children("pg_restore")
        os.kill(os.getpid(), self._signum)
        time.sleep(10)  # the SIGTERM handler (or Python's SIGINT one) raises long before
        raise AssertionError("the signal did not interrupt the check")


@pytest.mark.parametrize("signum, raised", [(signal.SIGTERM, Terminated), (signal.SIGINT, KeyboardInterrupt)])
def test_an_interrupted_check_leaves_no_pg_restore_and_no_temp_file(stored_app, tmp_path, monkeypatch, signum, raised):
    _, ctx, manifest = stored_app
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    store = _SignalledStore(ctx.store, signum)
    with pytest.raises(raised):
        with sigterm_as_interrupt():
            check_backup(store, manifest, ctx.read_keys)
    assert store.running_then, "pg_restore was not running when the signal came: the test proved nothing"
    assert _children("pg_restore") == []
    assert all(not Path(f"/proc/{pid}").exists() for pid in store.running_then), "pg_restore was not reaped"
    assert list(tmp.iterdir()) == []
