"""The catalog and retention on a real store with real sealed manifests: nothing valid, foreign,
in flight or of unknown state is ever deleted. Backups are written directly (no pg_dump needed
to exercise the catalog), except where the engine itself is under test."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone

import pytest

from dbops_pipelines import fleet
from dbops_pipelines.backup.catalog import find_backup, list_backups
from dbops_pipelines.backup.crypto import seal_record
from dbops_pipelines.backup.manifest import (BackupManifest, data_key, lease_key, manifest_key, new_backup_id,
                                             read_manifest, seal_manifest)
from dbops_pipelines.config import load_config
from dbops_pipelines.context import FleetContext
from dbops_pipelines.errors import BackupFailed, IntegrityError, StorageError
from dbops_pipelines.inventory import inventory
from dbops_pipelines.storage.local import LocalStore
from dbops_pipelines.verification.report import VerificationReport, latest_reports, save_report

NOW = datetime.now(timezone.utc)


@pytest.fixture
def ctx(write_config):
    path = write_config({"app": "host=db1 dbname=app", "crm": "host=db1 dbname=crm",
                         "marts": {"dsn": "host=db1 dbname=marts", "backup": {"kind": "tables", "tables": ["public.facts"]}}},
                        defaults={"retention": {"keep_daily": 2, "keep_weekly": 0, "keep_monthly": 0, "min_age_days": 0}})
    return FleetContext(load_config(path))


def put_backup(ctx, target: str, days_ago: float, kind: str = "full", suffix: str = "aaaa") -> BackupManifest:
    started = NOW - timedelta(days=days_ago)
    bid = new_backup_id(target, started, suffix)
    stored = ctx.store.put_bytes(data_key(target, bid), os.urandom(64))
    m = BackupManifest(bid, target, kind, target, "db1:5432", "15.4", "15.4", started.isoformat(), started.isoformat(),
                       100, stored.size, stored.sha256, data_key(target, bid), stored.location, "zstd-3", "aes", ctx.write_key.key_id,
                       {"public.t": 1}, {"sha256": "x"})
    ctx.store.put_bytes(manifest_key(target, bid), seal_manifest(m, ctx.write_key))
    return m


def states(ctx, target=None) -> dict[str, str]:
    return {e.backup_id: e.state for e in list_backups(ctx.store, ctx.read_keys, target)}


def test_unreadable_or_untrusted_manifest_stops_retention_for_that_target_only(ctx):
    app = [put_backup(ctx, "app", d, suffix=f"{d:04x}") for d in (1, 40, 50, 60)]
    crm = [put_backup(ctx, "crm", d, suffix=f"{d:04x}") for d in (1, 40, 50)]
    # one malformed, one altered: each makes its backup's state unknown
    ctx.store.put_bytes(manifest_key("app", app[2].backup_id), b"{not json", overwrite=True)
    altered = ctx.store.get_bytes(manifest_key("app", app[3].backup_id)).replace(b'"raw_bytes": 100', b'"raw_bytes": 101')
    ctx.store.put_bytes(manifest_key("app", app[3].backup_id), altered, overwrite=True)
    got = states(ctx, "app")
    assert got[app[2].backup_id] == got[app[3].backup_id] == "unknown"
    outcome = fleet.apply_retention(ctx)
    assert set(outcome.blocked) == {"app"} and app[3].backup_id in "; ".join(outcome.blocked["app"])
    assert not [d for d in outcome.plan.to_delete if d.target == "app"]
    assert len(states(ctx, "app")) == 4                       # nothing of app deleted
    assert outcome.deleted == [crm[2].backup_id]              # crm still planned normally (2 dailies kept)


def test_transient_store_error_reading_a_manifest_is_unknown_not_incomplete(ctx):
    from dbops_pipelines.errors import StorageError

    class FlakyStore(LocalStore):  # the store answers the listing, then fails one read
        def get(self, key, chunk_size=1 << 20):
            if key.endswith("/manifest.json"):
                raise StorageError(f"S3 reading {key} failed: 503 SlowDown")
            return super().get(key, chunk_size)

    put_backup(ctx, "app", 40)
    put_backup(ctx, "app", 1, suffix="bbbb")
    flaky = FleetContext(ctx.config, store=FlakyStore(ctx.store.root))
    assert set(states(flaky, "app").values()) == {"unknown"}
    outcome = fleet.apply_retention(flaky, "app")
    assert outcome.deleted == [] and "503 SlowDown" in "; ".join(outcome.blocked["app"])
    assert len(states(ctx, "app")) == 2


def test_manifest_copied_into_another_backup_folder_is_refused(ctx):
    a, b = put_backup(ctx, "app", 2, suffix="aaaa"), put_backup(ctx, "app", 1, suffix="bbbb")
    ctx.store.put_bytes(manifest_key("app", b.backup_id), ctx.store.get_bytes(manifest_key("app", a.backup_id)), overwrite=True)
    assert states(ctx, "app")[b.backup_id] == "unknown"
    with pytest.raises(IntegrityError, match="altered or does not belong"):
        find_backup(ctx.store, ctx.read_keys, b.backup_id)


def test_missing_data_object_is_not_valid_and_stops_retention(ctx):
    gone, _ = put_backup(ctx, "app", 1, suffix="aaaa"), put_backup(ctx, "app", 50, suffix="bbbb")
    ctx.store.delete(data_key("app", gone.backup_id))
    assert states(ctx, "app")[gone.backup_id] == "missing_data"
    with pytest.raises(IntegrityError, match="data object is missing"):
        find_backup(ctx.store, ctx.read_keys, gone.backup_id)
    outcome = fleet.apply_retention(ctx, "app")
    assert outcome.blocked and outcome.deleted == []


def test_foreign_objects_are_never_listed_nor_deleted(ctx):
    oldest = put_backup(ctx, "app", 90)
    put_backup(ctx, "app", 1, suffix="bbbb")
    put_backup(ctx, "app", 60, suffix="cccc")
    foreign = ["app/notes/readme.txt", "backups/app/not-an-id/dump.pgc.zst.aes", "wal/c1/000000010000000000000001",
               "backups/app/app-20200101T000000Z-abcd/colleague.txt", "backups/crm/app-20200101T000000Z-abcd/manifest.json",
               "reports/2026/stats.html"]
    for key in foreign:
        ctx.store.put_bytes(key, b"not ours")
    assert len(states(ctx)) == 3
    outcome = fleet.apply_retention(ctx)
    assert outcome.deleted == [oldest.backup_id]
    assert all(ctx.store.exists(k) for k in foreign)


def test_backup_being_written_is_not_judged_and_a_dead_writers_leftovers_are(ctx):
    put_backup(ctx, "app", 3)
    live = new_backup_id("app", NOW - timedelta(days=2), "cccc")
    ctx.store.put_bytes(lease_key("app", live), b"{}")
    ctx.store.put_bytes(data_key("app", live), b"half-way")
    dead = new_backup_id("app", NOW - timedelta(days=3), "dddd")
    ctx.store.put_bytes(lease_key("app", dead), b"{}")
    ctx.store.put_bytes(data_key("app", dead), b"abandoned")
    old = (NOW - timedelta(days=3)).timestamp()
    for key in (lease_key("app", dead), data_key("app", dead)):
        os.utime(ctx.store._path(key), (old, old))
    got = states(ctx, "app")
    assert got[live] == "writing" and got[dead] == "incomplete"
    outcome = fleet.apply_retention(ctx, "app")
    assert outcome.deleted == [dead]
    assert ctx.store.exists(data_key("app", live))


def test_partial_target_keeps_its_own_backups_and_partials_never_crowd_out_full(ctx):
    tables = [put_backup(ctx, "marts", d, kind="tables", suffix=f"{d:04x}") for d in (1, 2, 3, 4)]
    full = put_backup(ctx, "marts", 200, kind="full", suffix="ffff")
    outcome = fleet.apply_retention(ctx, "marts", dry_run=True)
    keep = {d.backup_id for d in outcome.plan.to_keep}
    assert {tables[0].backup_id, tables[1].backup_id, full.backup_id} <= keep   # 2 dailies of its kind + newest full
    assert {d.backup_id for d in outcome.plan.to_delete} == {tables[2].backup_id, tables[3].backup_id}
    # on a full target, schema dumps neither fill slots nor protect themselves
    schema = [put_backup(ctx, "app", d, kind="schema", suffix=f"{d:04x}") for d in (1, 2)]
    put_backup(ctx, "app", 5, suffix="ffff")
    deleted = fleet.apply_retention(ctx, "app").deleted
    assert set(deleted) == {s.backup_id for s in schema}


def test_a_manifest_gains_fields_without_invalidating_old_ones(ctx):
    m = put_backup(ctx, "app", 1)
    raw = json.loads(m.body())
    raw["wal_start_lsn"] = "0/3000028"   # a field a later release adds
    body = json.dumps(raw, indent=2).encode()
    ctx.store.put_bytes(manifest_key("app", m.backup_id),
                        seal_record(ctx.write_key, "dbops-backup-manifest", 3, f"app/{m.backup_id}", body), overwrite=True)
    read = read_manifest(ctx.store.get_bytes(manifest_key("app", m.backup_id)), ctx.read_keys, "app", m.backup_id)
    assert read.sha256 == m.sha256 and states(ctx, "app")[m.backup_id] == "valid"


def test_unauthenticated_verification_report_does_not_verify(ctx):
    m = put_backup(ctx, "app", 1)
    report = VerificationReport(m.backup_id, "app", NOW.isoformat(), "r1", "s", "db1:5432", 1.0, 60)
    save_report(ctx.store, report, ctx.write_key)
    assert [e.verified for e in inventory(ctx, "app")] == [True]
    other = VerificationReport(m.backup_id, "app", (NOW + timedelta(seconds=5)).isoformat(), "r2", "s", "db1:5432", 1.0, 60)
    ctx.store.put_bytes(f"_verifications/app/{m.backup_id}/29990101T000000Z.json",
                        json.dumps({**other.to_dict(), "passed": True}).encode())  # unsigned: written without the key
    failed = VerificationReport(m.backup_id, "app", (NOW + timedelta(seconds=9)).isoformat(), "r3", "s", "db1:5432", 1.0, 60)
    from dbops_pipelines.verification.report import Finding
    failed.findings.append(Finding("row_count", "error", "public.t", "differs"))
    save_report(ctx.store, failed, ctx.write_key)
    assert latest_reports(ctx.store, ctx.read_keys, "app")[m.backup_id].run_id == "r3"
    assert [e.verified for e in inventory(ctx, "app")] == [False]


def test_legacy_layout_is_refused_by_retention_and_migrated(ctx):
    from dbops_pipelines.backup.crypto import manifest_mac
    from dbops_pipelines.backup.manifest import V1_FIELDS
    from dbops_pipelines.backup.migrate import migrate_target

    m = put_backup(ctx, "app", 10)
    # rewrite it exactly as dbops 0.1 stored it: <target>/<id>/, manifest format 1
    old_data, old_manifest = f"app/{m.backup_id}/dump.pgc.zst.aes", f"app/{m.backup_id}/manifest.json"
    ctx.store.put(old_data, ctx.store.get(m.object_key))
    payload = {**{k: v for k, v in json.loads(m.body()).items() if k in V1_FIELDS}, "object_key": old_data, "format_version": 1}
    mac = manifest_mac(ctx.write_key, json.dumps(payload, sort_keys=True, separators=(",", ":")).encode())
    ctx.store.put_bytes(old_manifest, json.dumps({**payload, "mac": mac}, indent=2, sort_keys=True).encode())
    for key in (m.object_key, manifest_key("app", m.backup_id)):
        ctx.store.delete(key)
    with pytest.raises(StorageError, match="layout of dbops before 0.2(.|\n)*dbops store migrate"):
        fleet.apply_retention(ctx, "app")
    result = migrate_target(ctx.store, ctx.read_keys, "app")
    assert result.moved == [m.backup_id] and result.left == {}
    assert states(ctx, "app") == {m.backup_id: "valid"}
    assert not ctx.store.exists(old_data) and not ctx.store.exists(old_manifest)
    assert fleet.apply_retention(ctx, "app").blocked == {}


def test_backup_confirms_its_object_before_reporting_success(write_config, sample_app, tmp_path):
    """Something deletes the data object between upload and manifest (another tool, a racing
    retention of an older release): the backup must fail and leave nothing behind."""

    class DeletingStore(LocalStore):
        def put_bytes(self, key, data, overwrite=False):
            if key.endswith("/manifest.json"):
                self.delete(key.rsplit("/", 1)[0] + "/dump.pgc.zst.aes")
            return super().put_bytes(key, data, overwrite)

    cfg = load_config(write_config({"app": sample_app["dsn"]}))
    ctx = FleetContext(cfg, store=DeletingStore(tmp_path / "racy"))
    with pytest.raises(BackupFailed, match="the data object is missing"):
        fleet.backup_target(ctx, "app")
    assert ctx.store.list() == []


def test_retention_beside_a_running_backup_keeps_it(write_config, sample_app, tmp_path):
    """Retention with min_age_days 0 runs while the backup is between upload and manifest."""
    path = write_config({"app": sample_app["dsn"]},
                        defaults={"retention": {"keep_daily": 1, "keep_weekly": 0, "keep_monthly": 0, "min_age_days": 0}})
    seen = []

    class RetentionDuringBackup(LocalStore):
        def put_bytes(self, key, data, overwrite=False):
            if key.endswith("/manifest.json") and not seen:
                seen.append(fleet.apply_retention(FleetContext(load_config(path), store=self), "app"))
            return super().put_bytes(key, data, overwrite)

    ctx = FleetContext(load_config(path), store=RetentionDuringBackup(tmp_path / "store2"))
    manifest = fleet.backup_target(ctx, "app")
    assert seen and seen[0].deleted == [] and "being written" in seen[0].plan.decisions[0].reasons
    assert states(ctx, "app") == {manifest.backup_id: "valid"}
