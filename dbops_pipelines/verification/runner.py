"""One verification: restore a backup into a scratch database and compare it with its manifest."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone

import psycopg

from dbops_pipelines import fleet
from dbops_pipelines.backup.catalog import BackupEntry, find_backup, list_backups
from dbops_pipelines.backup.snapshot import content_checksum_sql, count_rows, schema_fingerprint, split_table, user_tables
from dbops_pipelines.config import FleetConfig, VerificationSettings
from dbops_pipelines.redact import redact
from dbops_pipelines.errors import DbopsError, EncryptionKeyError, IntegrityError, StorageError
from dbops_pipelines.restore import restore_backup
from dbops_pipelines.storage.base import BackupStore
from dbops_pipelines.verification.compare import compare_fingerprints, compare_tables, rto_finding
from dbops_pipelines.verification.report import Finding, VerificationReport, save_report
from dbops_pipelines.verification.sanity import run_sanity_checks
from dbops_pipelines.verification.scratch import ScratchDatabase, admin_dsn, scratch_name, server_label, sweep_stale


def pick_backup(store: BackupStore, target: str, backup_id: str | None) -> BackupEntry:
    if backup_id:
        entry = find_backup(store, backup_id)
        if entry.target != target:
            raise StorageError(f"backup {backup_id} belongs to target {entry.target}, not {target}", f"run `dbops verify {entry.target} --backup {backup_id}`")
        return entry
    valid = [e for e in list_backups(store, target) if e.valid]
    if not valid:
        raise StorageError(f"target {target} has no valid backup to verify", f"run `dbops backup {target}` first")
    return valid[0]


def _restored_state(dsn: str, manifest) -> tuple[dict[str, int], dict[str, int], dict[str, str], dict]:
    """(rows of manifest tables present, rows of tables the manifest does not count, checksums, fingerprint)."""
    with psycopg.connect(dsn) as conn:
        present = set(user_tables(conn))
        rows = count_rows(conn, sorted(t for t in manifest.table_rows if t in present))
        extra = count_rows(conn, sorted(present - set(manifest.table_rows)))
        checksums = {t: conn.execute(content_checksum_sql(*split_table(t))).fetchone()[0]
                     for t in manifest.table_checksums if t in present}
        return rows, extra, checksums, schema_fingerprint(conn)


def _only_selected(fingerprint: dict, tables: list[str]) -> dict:
    """A 'tables' backup restores just those tables: compare only what belongs to them."""
    prefixes = tuple(f"{t}." for t in tables)
    keep = ("tables", "columns", "constraints", "policies")
    return {c: {n: d for n, d in fingerprint.get(c, {}).items() if n in tables or n.startswith(prefixes)} for c in keep}


def verify_backup(
    cfg: FleetConfig,
    target: str,
    backup_id: str | None = None,
    run_id: str | None = None,
    log: Callable[[str], None] = lambda _msg: None,
) -> VerificationReport:
    """Never raises for a bad backup: every problem becomes a finding in a saved, failed report.
    Raises only when no verification could be attempted (config, no backup, server unreachable)."""
    settings = cfg.verification_for(target)
    store = fleet.fleet_store(cfg)
    manifest = pick_backup(store, target, backup_id).manifest
    started = datetime.now(timezone.utc)
    admin = admin_dsn(cfg.target(target).dsn, settings.server_dsn)
    swept = sweep_stale(admin, target, started)
    for name in swept:
        log(f"dropped stale scratch database {name} left by an earlier run")
    name = scratch_name(target, started)
    report = VerificationReport(
        backup_id=manifest.backup_id, target=target, verified_at=started.isoformat(), run_id=run_id,
        scratch_database=name, server=server_label(admin), rto_seconds=None,
        rto_objective_seconds=settings.rto_objective_seconds,
    )
    log(f"verifying {manifest.backup_id} in scratch database {name} on {report.server}")
    try:
        with ScratchDatabase(admin, name) as scratch:
            _restore_and_compare(cfg, store, settings, manifest, scratch, report, log)
    except psycopg.Error as exc:
        report.findings.append(Finding("restore", "error", manifest.backup_id, f"verification could not finish: {redact(str(exc)).strip()}"))
    # Evidence is kept for every conclusion, pass or fail. A cancelled run raises past this line
    # and records nothing: it concluded nothing.
    save_report(store, report)
    return report


def _restore_and_compare(cfg: FleetConfig, store: BackupStore, settings: VerificationSettings, manifest,
                         scratch: str, report: VerificationReport, log: Callable[[str], None]) -> None:
    target = manifest.target
    t0 = time.monotonic()
    try:
        # No GRANTs: a staging server need not have the production roles, and privileges are
        # not part of what verification compares.
        restore_backup(store, manifest.backup_id, fleet.read_keys(cfg), scratch, jobs=settings.jobs, no_privileges=True,
                       pg_bin_dir=cfg.defaults.pg_bin_dir, on_warning=lambda line: log(f"pg_restore: {line}"))
    except (IntegrityError, EncryptionKeyError) as exc:
        report.findings.append(Finding("integrity", "error", manifest.backup_id, exc.message))
        return
    except DbopsError as exc:
        report.findings.append(Finding("restore", "error", manifest.backup_id, exc.message))
        return
    report.rto_seconds = round(time.monotonic() - t0, 3)
    log(f"restored in {report.rto_seconds:.1f} s; comparing with the manifest")
    rows, extra, checksums, fingerprint = _restored_state(scratch, manifest)
    report.tables, table_findings = compare_tables(manifest, rows, checksums)
    report.findings += table_findings
    report.findings += [Finding("extra_table", "error", t, f"table {t} has {n} rows in the restored copy but none in the manifest", 0, n)
                        for t, n in extra.items() if n]
    expected_schema = manifest.schema_fingerprint
    if manifest.kind == "tables":
        expected_schema, fingerprint = (_only_selected(f, manifest.selected_tables) for f in (expected_schema, fingerprint))
    report.findings += compare_fingerprints(expected_schema, fingerprint)
    if settings.sanity_checks:
        with psycopg.connect(scratch) as conn:
            params = {"backup_started_at": datetime.fromisoformat(manifest.started_at),
                      "backup_finished_at": datetime.fromisoformat(manifest.finished_at), "target": target}
            report.sanity, sanity_findings = run_sanity_checks(conn, settings.sanity_checks, params)
            report.findings += sanity_findings
    report.findings += rto_finding(report.rto_seconds, settings.rto_objective_seconds)
