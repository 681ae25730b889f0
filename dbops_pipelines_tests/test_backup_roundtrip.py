"""Backup -> store -> restore on a real cluster, local and S3 stores: every row comes back."""

from __future__ import annotations

import json
import subprocess
import sys

import psycopg
import pytest

from dbops_pipelines import fleet
from dbops_pipelines.context import FleetContext
from dbops_pipelines.backup.catalog import list_backups
from dbops_pipelines.backup.integrity import check_backup
from dbops_pipelines.config import load_config
from dbops_pipelines.restore import restore_backup
from dbops_pipelines_tests.dbcompare import fingerprint, table_digests


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
    assert table_digests(dest) == source
    assert fingerprint(dest) == manifest.schema_fingerprint
    assert manifest.schema_fingerprint["tables"]["public.requisitions"] == "r rls forced"


def test_parallel_restore_and_clean_replace(write_config, sample_app, pg_cluster, fresh_db):
    cfg = load_config(write_config({"app": sample_app["dsn"]}))
    manifest = fleet.backup_target(FleetContext(cfg), "app")
    store, keys, dest = FleetContext(cfg).store, FleetContext(cfg).read_keys, pg_cluster.dsn(fresh_db)
    restore_backup(store, manifest, keys, dest, jobs=2)
    with psycopg.connect(dest, autocommit=True) as conn:
        conn.execute("DELETE FROM audit_events")
    restore_backup(store, manifest, keys, dest, clean=True)
    assert table_digests(dest) == table_digests(sample_app["dsn"])


def test_schema_only_and_selected_tables(write_config, sample_app, pg_cluster, fresh_db):
    cfg = load_config(write_config({"app": sample_app["dsn"]}))
    schema = fleet.backup_target(FleetContext(cfg), "app", kind="schema")
    assert schema.kind == "schema" and schema.table_rows == {}
    picked = fleet.backup_target(FleetContext(cfg), "app", kind="tables", tables=("public.vendors", "tenants"))
    assert picked.table_rows == {t: sample_app["counts"][t] for t in ("public.tenants", "public.vendors")}

    store, keys = FleetContext(cfg).store, FleetContext(cfg).read_keys
    dest = pg_cluster.dsn(fresh_db)
    restore_backup(store, schema, keys, dest)
    assert fingerprint(dest)["tables"] == schema.schema_fingerprint["tables"]
    assert all(n == 0 for n, _ in table_digests(dest).values())
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
    assert table_digests(pg_cluster.dsn(fresh_db)) == table_digests(sample_app["dsn"])

    plan = dbops("retention", "--dry-run", "--json")
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["delete_count"] == 0


def test_excluded_table_data_keeps_schema_not_rows(write_config, sample_app, pg_cluster, fresh_db):
    cfg = load_config(write_config({"app": {"dsn": sample_app["dsn"], "exclude_table_data": ["public.audit_events"]}}))
    manifest = fleet.backup_target(FleetContext(cfg), "app")
    assert "public.audit_events" not in manifest.table_rows
    restore_backup(FleetContext(cfg).store, manifest, FleetContext(cfg).read_keys, pg_cluster.dsn(fresh_db))
    got = table_digests(pg_cluster.dsn(fresh_db))
    assert got["public.audit_events"][0] == 0
    assert got["public.users"] == table_digests(sample_app["dsn"])["public.users"]
