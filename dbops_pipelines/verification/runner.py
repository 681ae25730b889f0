"""One verification: restore a backup into a scratch database and compare it with its manifest."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone

import psycopg

from dbops_pipelines.backup.catalog import BackupEntry, find_backup, list_backups
from dbops_pipelines.backup.snapshot import (QUOTED_NAMES, canonical_table, content_checksum_sql, count_rows, schema_fingerprint,
                                             split_table, user_tables)
from dbops_pipelines.config import VerificationSettings, host_port
from dbops_pipelines.context import FleetContext
from dbops_pipelines.redact import redact
from dbops_pipelines.errors import (DbopsError, EncryptionKeyError, IntegrityError, RestoreFailed, StorageError,
                                   VerificationNotRun)
from dbops_pipelines.gdpr.service import reapply_after_restore
from dbops_pipelines.restore import restore_backup
from dbops_pipelines.table_selection import create_schemas
from dbops_pipelines.verification.compare import compare_fingerprints, compare_tables, rto_finding
from dbops_pipelines.verification.report import Finding, VerificationReport, save_report
from dbops_pipelines.verification.sanity import run_sanity_checks
from dbops_pipelines.verification.scratch import (SAME_SERVER, ScratchDatabase, admin_dsn, same_server_notice, scratch_name,
                                                  server_role, sweep_stale)


def pick_backup(ctx: FleetContext, target: str, backup_id: str | None) -> BackupEntry:
    """The chosen backup, or the newest valid *full* one: a partial backup is not the target's
    restore point (verify it by naming it). A target configured for partial backups verifies the
    newest of its full and configured-kind backups, so an old full one is not verified for ever."""
    if backup_id:
        try:
            entry = find_backup(ctx.store, ctx.read_keys, backup_id, damaged_ok=True)
        except EncryptionKeyError as exc:
            raise VerificationNotRun(f"verification of {backup_id} not run: {exc.message}", exc.hint) from None
        if entry.target != target:
            raise StorageError(f"backup {backup_id} belongs to target {entry.target}, not {target}", f"run `dbops verify {entry.target} --backup {backup_id}`")
        return entry
    entries = list_backups(ctx.store, ctx.read_keys, target)
    # Damaged backups are verified too: their damage is exactly what verification must report.
    # A target configured for partial backups has its configured kind as its restore point.
    configured = ctx.config.target(target).kind
    kinds = ("full",) if configured == "full" else ("full", configured)
    full = [e for e in entries if e.manifest is not None and e.kind in kinds]   # newest first
    if not full and any(isinstance(e.error, EncryptionKeyError) for e in entries):
        error = next(e.error for e in entries if isinstance(e.error, EncryptionKeyError))
        raise VerificationNotRun(f"verification of {target} not run: {error.message}", error.hint)
    if not full:
        raise StorageError(f"target {target} has no valid full backup to verify",
                           f"run `dbops backup {target}` first, or name a partial backup with --backup")
    return full[0]


def _restored_state(dsn: str, manifest) -> tuple[dict[str, int], dict[str, int], dict[str, str], dict]:
    """(rows of manifest tables present, rows of tables the manifest does not count, checksums,
    fingerprint), keyed by snapshot.qualified(); the fingerprint names objects as the manifest's does."""
    expected = {canonical_table(t) for t in manifest.table_rows}
    with psycopg.connect(dsn) as conn:
        present = set(user_tables(conn))
        rows = count_rows(conn, sorted(expected & present))
        extra = count_rows(conn, sorted(present - expected))
        summed = {canonical_table(t) for t in manifest.table_checksums} & present
        checksums = {t: conn.execute(content_checksum_sql(*split_table(t))).fetchone()[0] for t in sorted(summed)}
        quoted = manifest.schema_fingerprint.get("names") == QUOTED_NAMES
        return rows, extra, checksums, schema_fingerprint(conn, quoted)


def _only_selected(fingerprint: dict, tables: list[str]) -> dict:
    """A 'tables' backup restores just those tables: compare only what belongs to them. The
    selection's keys and the fingerprint's names come from the same backup, so they agree on
    quoting, and with quoting a table's objects are exactly the names that start with its key."""
    prefixes = tuple(f"{t}." for t in tables)
    keep = ("tables", "columns", "constraints", "policies")
    return {c: {n: d for n, d in fingerprint.get(c, {}).items() if n in tables or n.startswith(prefixes)} for c in keep}


def verify_backup(
    ctx: FleetContext,
    target: str,
    backup_id: str | None = None,
    run_id: str | None = None,
    log: Callable[[str], None] = lambda _msg: None,
) -> VerificationReport:
    """Never raises for a bad backup: every problem with the backup becomes a finding in a saved,
    failed report. Raises VerificationNotRun (or another DbopsError) when the verification could
    not be carried out (no key, no backup, server down, no CREATEDB, no client programs): an
    operator's problem is never recorded as evidence against a backup."""
    cfg = ctx.config
    settings = cfg.verification_for(target)
    manifest = pick_backup(ctx, target, backup_id).manifest
    try:
        seal_key = ctx.write_key  # reports are sealed with it; check before any work
        if manifest.key_id not in {k.key_id for k in ctx.read_keys}:
            raise EncryptionKeyError(
                f"backup {manifest.backup_id} was encrypted with key id {manifest.key_id}, which no configured key matches",
                "set the key it was written with (encryption.key_env, or encryption.previous_key_envs after a rotation)")
    except EncryptionKeyError as exc:
        raise VerificationNotRun(f"verification of {manifest.backup_id} not run: {exc.message}", exc.hint) from None
    started = datetime.now(timezone.utc)
    target_dsn = cfg.target(target).dsn
    admin = admin_dsn(target_dsn, settings.server_dsn)
    role = server_role(target_dsn, settings.server_dsn, bool(settings.same_server_on_purpose))
    try:
        swept = sweep_stale(admin, target, started)
    except DbopsError as exc:
        raise VerificationNotRun(f"verification of {manifest.backup_id} not run: {exc.message}", exc.hint) from None
    for name in swept:
        log(f"dropped stale scratch database {name} left by an earlier run")
    name = scratch_name(target, started)
    report = VerificationReport(
        backup_id=manifest.backup_id, target=target, verified_at=started.isoformat(), run_id=run_id,
        scratch_database=name, server=host_port(admin), rto_seconds=None,
        rto_objective_seconds=settings.rto_objective_seconds, server_role=role,
    )
    if role == SAME_SERVER:
        report.server_notice = same_server_notice(target, report.server, settings.server_dsn)
        log(f"WARNING: {report.server_notice}")
    log(f"verifying {manifest.backup_id} in scratch database {name} on {report.server} ({role.replace('_', ' ')})")
    try:
        with ScratchDatabase(admin, name) as scratch:
            _restore_and_compare(ctx, settings, manifest, scratch, report, log)
    except psycopg.Error as exc:
        raise VerificationNotRun(f"verification of {manifest.backup_id} could not finish: {redact(str(exc)).strip()}",
                                 "check that the verification server is up and the role may CREATE DATABASE; nothing was recorded") from None
    # Evidence is kept for every conclusion, pass or fail. A cancelled run raises past this line
    # and records nothing: it concluded nothing.
    save_report(ctx.store, report, seal_key)
    return report


def _restore_and_compare(ctx: FleetContext, settings: VerificationSettings, manifest,
                         scratch: str, report: VerificationReport, log: Callable[[str], None]) -> None:
    target = manifest.target
    t0 = time.monotonic()
    try:
        if manifest.kind == "tables":
            create_schemas(scratch, manifest.selected_tables)  # pg_dump -t writes no CREATE SCHEMA
        # No GRANTs: a staging server need not have the production roles, and privileges are
        # not part of what verification compares.
        restore_backup(ctx.store, manifest, ctx.read_keys, scratch, jobs=settings.jobs, no_privileges=True,
                       pg_bin_dir=ctx.config.defaults.pg_bin_dir, on_warning=lambda line: log(f"pg_restore: {line}"))
    except IntegrityError as exc:
        report.findings.append(Finding("integrity", "error", manifest.backup_id, exc.message))
        return
    except RestoreFailed as exc:
        report.findings.append(Finding("restore", "error", manifest.backup_id, exc.message))
        return
    except DbopsError as exc:  # no client programs, store unreachable...: nothing learnt about the backup
        raise VerificationNotRun(f"verification of {manifest.backup_id} not run: {exc.message}", exc.hint) from None
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
    _reapply_erasures(ctx, manifest, scratch, report, log)


def _reapply_erasures(ctx: FleetContext, manifest, scratch: str, report: VerificationReport, log: Callable[[str], None]) -> None:
    """After the exact comparison, the erasures recorded since the backup are re-applied to the
    copy as a real restore does: proof that they can be. A failure is a warning, not an error:
    the backup itself is sound, but restoring it would bring people back (docs/gdpr.md)."""
    try:
        result = reapply_after_restore(ctx, manifest, scratch, log=log)
    except DbopsError as exc:
        report.findings.append(Finding("erasure_reapply", "warning", manifest.target,
                                       f"the erasure ledger could not be re-applied to the restored copy: {exc.message}"))
        return
    except psycopg.Error as exc:   # never its message: a data error quotes the value it choked on
        report.findings.append(Finding("erasure_reapply", "warning", manifest.target,
                                       "the erasure ledger could not be re-applied to the restored copy: "
                                       f"{type(exc).__name__} (SQLSTATE {exc.sqlstate})"))
        return
    if result is None:
        return
    report.erasures_reapplied = result.to_dict()
    log(result.summary())
    if not result.complete:
        report.findings.append(Finding("erasure_reapply", "warning", manifest.target,
                                       f"{len(result.blocked)} erasure ledger entries could not be re-applied to the "
                                       f"restored copy: {result.blocked[0]['why']}"))
