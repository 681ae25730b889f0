"""GDPR runs of one target, as the CLI and the Dagster assets start them: connect as the right
role, check the configuration against the catalog, then count (dry run), clean, or re-apply the
erasure ledger; every run is recorded in the target's audit schema (audit.py) and every erasure
in the ledger (ledger.py) before it commits."""

from __future__ import annotations

import getpass
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import psycopg
from psycopg import sql

from dbops_pipelines.config import FleetConfig, GdprSettings
from dbops_pipelines.context import FleetContext
from dbops_pipelines.errors import ConfigError, DbopsError, IntegrityError
from dbops_pipelines.gdpr import audit
from dbops_pipelines.gdpr.catalog import Table, discover, soft_delete_table
from dbops_pipelines.gdpr.cleanup import CleanupResult, run_cleanup
from dbops_pipelines.gdpr.ledger import REAPPLY_MARGIN, LedgerReading, LedgerWriter, read_ledger
from dbops_pipelines.gdpr.plan import CleanupPlan, dry_run, ident
from dbops_pipelines.gdpr.reapply import ReapplyResult, reapply
from dbops_pipelines.pgtools import connect

APPLICATION_NAME = "dbops_gdpr"
OVERDUE_AFTER = timedelta(days=1)     # past grace + this, a row still there means cleanup is not keeping up


def gdpr_settings(cfg: FleetConfig, target: str) -> GdprSettings:
    settings = cfg.target(target).gdpr
    if settings is None or not settings.enabled:
        raise ConfigError(f"target {target!r} has no gdpr section (or it is disabled)",
                          f"add targets.{target}.gdpr with at least subject_table (docs/gdpr.md)")
    return settings


def _context(ctx: FleetContext | FleetConfig) -> FleetContext:
    return ctx if isinstance(ctx, FleetContext) else FleetContext(ctx)


def _connect_dsn(cfg: FleetConfig, dsn: str, label: str, read_only: bool = False) -> psycopg.Connection:
    # TimeZone UTC: a `timestamp without time zone` soft-delete column is read as UTC, whatever the
    # server's or the role's default zone (which would move the grace boundary by hours).
    # The dry run and the check read only, and say so to the server: a bug cannot make them write.
    # DateStyle and friends: keys and times travel as text between servers, in one spelling.
    return connect(dsn, label, retries=cfg.defaults.connect_retries, error=DbopsError,
                   application_name=APPLICATION_NAME, autocommit=True,
                   options="-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=postgres -c extra_float_digits=3"
                           + (" -c default_transaction_read_only=on" if read_only else ""))


def _connect(cfg: FleetConfig, target: str, purpose: str) -> psycopg.Connection:
    return _connect_dsn(cfg, cfg.dsn_for(target, purpose), f"target {target}", read_only=purpose == "backup")


def _exclusive(conn: psycopg.Connection, target: str) -> None:
    """One cleanup or re-application per target at a time (the ledger is a single chain): a
    session-level advisory lock, released when the connection closes, whatever happens."""
    (ok,) = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (f"dbops_gdpr:{target}",)).fetchone()
    if not ok:
        raise DbopsError(f"another GDPR cleanup or re-application of {target} is running",
                         "let it finish (pg_stat_activity shows it as application_name dbops_gdpr), then run again")


def default_actor() -> str:
    try:
        return f"{getpass.getuser()} (dbops cli)"
    except OSError:
        return "dbops cli"


class _RunJournal:
    """What a cleanup run records of each batch before it commits: the ledger entry (in the store)
    and the batch's rows in the audit trail (in the same transaction as the batch)."""

    def __init__(self, ledger: LedgerWriter, schema: str, run_id: str):
        self.ledger, self.schema, self.run_id = ledger, schema, run_id

    def record(self, conn: psycopg.Connection, table: Table, gone: list[list[str]], done: Counter) -> None:
        rows: dict[str, dict[str, int]] = defaultdict(dict)
        for (name, action), n in done.items():
            rows[name][action] = n
        txid, at = conn.execute("SELECT pg_current_xact_id()::text, clock_timestamp()").fetchone()
        audit.count(conn, self.schema, self.run_id, done, self.ledger.seq + 1)
        # Last before the commit: if storing the entry fails, the batch rolls back.
        self.ledger.append_erasure(self.run_id, at, txid, table.name, table.primary_key, table.key_types, gone, dict(rows))


def _settle(conn: psycopg.Connection, ledger: LedgerWriter, run_id: str, patience: float = 30.0) -> list[int]:
    """Record which erasure entries not yet settled belong to batches that did not commit (an
    ``outcome`` entry), from the transaction ids' fate on the server. A transaction still open
    (a killed client whose session the server has not noticed yet) is waited for a while."""
    pending = ledger.unresolved()
    if not pending:
        return []
    deadline = time.monotonic() + patience
    while True:
        try:
            with conn.transaction():
                status = dict(conn.execute("SELECT x, pg_xact_status(x::xid8) FROM unnest(%s::text[]) AS x",
                                           ([e.txid for e in pending],)).fetchall())
        except psycopg.errors.InvalidParameterValue:
            status = {}   # ids "in the future": another server (restored elsewhere) cannot say; as NULL below
        if "in progress" not in status.values():
            break
        if time.monotonic() > deadline:
            raise DbopsError("a batch of an earlier GDPR run is still open on the server",
                             "wait until that session ends (pg_stat_activity, application_name dbops_gdpr), then run again")
        time.sleep(0.5)
    # NULL: too old for the server to know; counted as committed (the person was erased, or is
    # eligible and goes with this run).
    void = [e.seq for e in pending if status.get(e.txid) == "aborted"]
    (now,) = conn.execute("SELECT clock_timestamp()").fetchone()
    ledger.append_outcome(run_id, now, void)
    return void


def _finish(conn: psycopg.Connection, schema: str, run_id: str, outcome: str, ledger: LedgerWriter | None) -> None:
    try:
        audit.finish_run(conn, schema, run_id, outcome, ledger.seq if ledger else None)
    except psycopg.Error:
        pass     # the connection is what failed: the run's row stays `running`, which says as much


def _guarded(conn: psycopg.Connection, schema: str, run_id: str, work: Callable[[], object],
             ledger: LedgerWriter | None = None):
    try:
        outcome = work()
    except KeyboardInterrupt:
        _finish(conn, schema, run_id, "interrupted", ledger)
        raise
    except Exception as exc:
        _finish(conn, schema, run_id, f"failed: {type(exc).__name__}", ledger)
        raise
    _finish(conn, schema, run_id, "done", ledger)
    return outcome


def cleanup_target(ctx: FleetContext | FleetConfig, target: str, dry: bool = False,
                   log: Callable[[str], None] = lambda line: None, run_id: str | None = None,
                   actor: str | None = None) -> CleanupPlan | CleanupResult:
    """The dry run reads only, as the backup role; the cleanup writes, as roles.cleanup only.
    Both are recorded in the audit schema; the cleanup's erasures in the ledger."""
    ctx = _context(ctx)
    cfg = ctx.config
    settings = gdpr_settings(cfg, target)
    run_id, actor = run_id or uuid.uuid4().hex, actor or default_actor()
    if dry:
        with _connect(cfg, target, "backup") as conn:
            plan = dry_run(conn, target, discover(conn, settings), settings.grace_days, settings.soft_delete_column)
        _record_dry_run(cfg, target, settings, plan, run_id, actor)
        return plan
    with _connect(cfg, target, "cleanup") as conn:
        catalog = discover(conn, settings)
        _exclusive(conn, target)
        ledger = LedgerWriter(ctx.store, target, ctx.write_key, ctx.read_keys)   # key and store checked first
        audit.ensure_schema(conn, settings.audit_schema)
        recorded = audit.last_ledger_seq(conn, settings.audit_schema, target)
        if ledger.seq < recorded:
            raise IntegrityError(
                f"the erasure ledger of {target} ends at entry {ledger.seq}, but the audit trail in the database "
                f"records entry {recorded}: its newest entries are missing from the store",
                "restore them from the store's versions or a copy; cleanup does not erase anyone without a record")
        _settle(conn, ledger, run_id)          # what a killed run left unsettled
        (now,) = conn.execute("SELECT now()").fetchone()
        audit.start_run(conn, settings.audit_schema, run_id, target, "cleanup", actor,
                        now - timedelta(days=settings.grace_days), settings.grace_days, False)
        journal = _RunJournal(ledger, settings.audit_schema, run_id)

        def work() -> CleanupResult:
            try:
                return run_cleanup(conn, target, catalog, settings, log=log, journal=journal)
            finally:
                try:
                    _settle(conn, ledger, run_id)
                except (psycopg.Error, DbopsError) as exc:      # the next run settles it
                    log(f"the outcome of this run's batches was not recorded in the ledger ({type(exc).__name__}); "
                        "the next run records it")
        return _guarded(conn, settings.audit_schema, run_id, work, ledger)


def _record_dry_run(cfg: FleetConfig, target: str, settings: GdprSettings, plan: CleanupPlan, run_id: str, actor: str) -> None:
    """A dry run is audited too, through the cleanup role (the dry run's own session is read-only);
    without a cleanup role it says it could not be."""
    try:
        dsn = cfg.dsn_for(target, "cleanup")
    except ConfigError:
        plan.notes.append("not recorded in the audit schema: the target has no roles.cleanup")
        return
    with _connect_dsn(cfg, dsn, f"target {target}") as conn:
        audit.ensure_schema(conn, settings.audit_schema)
        with conn.transaction():
            audit.start_run(conn, settings.audit_schema, run_id, target, "cleanup", actor, plan.cutoff,
                            plan.grace_days, True)
            audit.count(conn, settings.audit_schema, run_id, Counter({(t.table, t.action): t.rows for t in plan.tables}))
            audit.finish_run(conn, settings.audit_schema, run_id, "dry run")


def _recorded_seq(cfg: FleetConfig, target: str, settings: GdprSettings) -> tuple[int | None, str | None]:
    """The newest ledger entry the target's audit trail records (read as the backup role), or
    None and why when it cannot be read: a restore after losing the server must still work."""
    try:
        with _connect(cfg, target, "backup") as conn:
            return audit.recorded_ledger_seq(conn, settings.audit_schema, target), None
    except DbopsError as exc:
        return None, (f"the ledger's newest entries could not be checked against the audit trail of {target} "
                      f"({type(exc).__name__}): if entries were removed from the store, they were not re-applied")


def _read_checked(ctx: FleetContext, target: str, settings: GdprSettings, since: datetime | None) -> LedgerReading:
    expected, note = _recorded_seq(ctx.config, target, settings)
    reading = read_ledger(ctx.store, ctx.read_keys, target, since, expected_total=expected)
    if note:
        reading.notes.append(note)
    return reading


def ledger_of(ctx: FleetContext | FleetConfig, target: str, since: datetime | None = None) -> LedgerReading:
    ctx = _context(ctx)
    return _read_checked(ctx, target, gdpr_settings(ctx.config, target), since)


def reapply_target(ctx: FleetContext | FleetConfig, target: str, taken_at: datetime | None, to_dsn: str | None = None,
                   log: Callable[[str], None] = lambda line: None, actor: str | None = None,
                   partial: bool = False) -> ReapplyResult:
    """Re-apply the ledger's erasures from REAPPLY_MARGIN before ``taken_at`` (when the restored
    backup was taken; all entries without it) to the target's own database (as roles.cleanup,
    recorded in its audit schema) or to ``to_dsn`` (a restored copy; ``partial``: only some of
    its tables were restored)."""
    ctx = _context(ctx)
    cfg = ctx.config
    settings = gdpr_settings(cfg, target)
    since = taken_at - REAPPLY_MARGIN if taken_at else None
    reading = _read_checked(ctx, target, settings, since)      # authenticated before anything changes
    if not reading.erasures:
        return ReapplyResult(target, since, notes=reading.notes)
    if to_dsn is not None:
        with _connect_dsn(cfg, to_dsn, "the restored database") as conn:
            result = reapply(conn, target, settings, reading.erasures, since, partial, log)
            result.notes[:0] = reading.notes
            return result
    run_id = uuid.uuid4().hex
    with _connect(cfg, target, "cleanup") as conn:
        _exclusive(conn, target)
        audit.ensure_schema(conn, settings.audit_schema)
        audit.start_run(conn, settings.audit_schema, run_id, target, "reapply", actor or default_actor(), since, None, False)

        def work() -> ReapplyResult:
            result = reapply(conn, target, settings, reading.erasures, since, partial, log)
            result.notes[:0] = reading.notes
            audit.count(conn, settings.audit_schema, run_id, result.removed)
            return result
        return _guarded(conn, settings.audit_schema, run_id, work)


def reapply_after_restore(ctx: FleetContext, manifest, to_dsn: str, log: Callable[[str], None] = lambda line: None,
                          partial: bool = False) -> ReapplyResult | None:
    """After a backup of ``manifest.target`` was restored into ``to_dsn``: erase again everyone
    erased since the backup started (less a margin). None when the target keeps no ledger."""
    target = manifest.target
    settings = ctx.config.targets.get(target)
    taken_at = datetime.fromisoformat(manifest.started_at)
    if settings is None or settings.gdpr is None or not settings.gdpr.enabled:
        reading = read_ledger(ctx.store, ctx.read_keys, target, taken_at - REAPPLY_MARGIN)
        if reading.erasures:
            raise ConfigError(f"the erasure ledger of {target} holds {len(reading.erasures)} entries newer than backup "
                              f"{manifest.backup_id}, but {target} has no gdpr section to re-apply them with",
                              f"restore the gdpr section of targets.{target} and run `dbops gdpr reapply {target} "
                              f"--since {manifest.started_at} --to <the restored database>`")
        return None
    return reapply_target(ctx, target, taken_at, to_dsn=to_dsn, log=log, partial=partial or manifest.kind == "tables")


def overdue_rows(cfg: FleetConfig, target: str) -> dict[str, int]:
    """Rows of each soft-deletable table soft-deleted longer ago than the grace period plus a
    day: cleanup should have removed them. Reads only."""
    settings = gdpr_settings(cfg, target)
    with _connect(cfg, target, "backup") as conn:
        catalog = discover(conn, settings)
        out = {}
        # Tables cleanup skips count too: rows left there are overdue all the same, and must show.
        skipped = [t for t in (soft_delete_table(conn, name, settings.soft_delete_column) for name in catalog.skipped)
                   if t is not None]
        for table in catalog.soft_deletable + skipped:
            (n,) = conn.execute(sql.SQL("SELECT count(*) FROM {t} WHERE {c} < now() - {age}").format(
                t=ident(table.name), c=sql.Identifier(settings.soft_delete_column),
                age=sql.Literal(timedelta(days=settings.grace_days) + OVERDUE_AFTER))).fetchone()
            out[table.name] = n
        return out
