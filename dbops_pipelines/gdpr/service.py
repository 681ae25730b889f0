"""One GDPR cleanup of one target, as the CLI and the Dagster asset run it: connect as the right
role, check the configuration against the catalog, then count (dry run) or clean."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from psycopg import sql

from dbops_pipelines.config import FleetConfig, GdprSettings
from dbops_pipelines.errors import ConfigError, DbopsError
from dbops_pipelines.gdpr.catalog import discover, soft_delete_table
from dbops_pipelines.gdpr.cleanup import CleanupResult, run_cleanup
from dbops_pipelines.gdpr.plan import CleanupPlan, dry_run, ident
from dbops_pipelines.pgtools import connect

APPLICATION_NAME = "dbops_gdpr"
OVERDUE_AFTER = timedelta(days=1)     # past grace + this, a row still there means cleanup is not keeping up


def gdpr_settings(cfg: FleetConfig, target: str) -> GdprSettings:
    settings = cfg.target(target).gdpr
    if settings is None or not settings.enabled:
        raise ConfigError(f"target {target!r} has no gdpr section (or it is disabled)",
                          f"add targets.{target}.gdpr with at least subject_table (docs/gdpr.md)")
    return settings


def _connect(cfg: FleetConfig, target: str, purpose: str):
    # TimeZone UTC: a `timestamp without time zone` soft-delete column is read as UTC, whatever the
    # server's or the role's default zone (which would move the grace boundary by hours).
    # The dry run and the check read only, and say so to the server: a bug cannot make them write.
    read_only = " -c default_transaction_read_only=on" if purpose == "backup" else ""
    return connect(cfg.dsn_for(target, purpose), f"target {target}", retries=cfg.defaults.connect_retries,
                   error=DbopsError, application_name=APPLICATION_NAME, autocommit=True,
                   options="-c TimeZone=UTC" + read_only)


def cleanup_target(cfg: FleetConfig, target: str, dry: bool = False,
                   log: Callable[[str], None] = lambda line: None) -> CleanupPlan | CleanupResult:
    """The dry run reads only, as the backup role; the cleanup writes, as roles.cleanup only."""
    settings = gdpr_settings(cfg, target)
    with _connect(cfg, target, "backup" if dry else "cleanup") as conn:
        catalog = discover(conn, settings)
        if dry:
            return dry_run(conn, target, catalog, settings.grace_days, settings.soft_delete_column)
        return run_cleanup(conn, target, catalog, settings, log=log)


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

