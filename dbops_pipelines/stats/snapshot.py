"""Taking one snapshot of one target: connect as the monitor role, collect each section in its own
short read-only transaction, turn counters into rates against the previous snapshot, judge the
findings. Safe on production: its own application_name, a statement and lock timeout on every
query, bounded work on huge catalogs (each section lists top N only), pg_monitor is enough.

A section that fails (a timeout, a view it may not read) is recorded in ``errors`` and as a
``snapshot_incomplete`` finding; the other sections are still collected. A target that cannot be
reached raises ``DatabaseUnreachable``.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import replace

import psycopg

from dbops_pipelines.config import FleetConfig, StatsSettings
from dbops_pipelines.errors import StatsFailed
from dbops_pipelines.findings import Finding
from dbops_pipelines.pgtools import connect
from dbops_pipelines.redact import redact
from dbops_pipelines.stats.model import CollectEnv, Sample, Section, Snapshot

APPLICATION_NAME = "dbops_stats"   # so snapshots are recognisable (and excluded from their own counts)
SECTION_MODULES = ("database", "statements", "activity", "tables", "health")


def all_sections() -> list[Section]:
    return [importlib.import_module(f"dbops_pipelines.stats.sections.{name}").SECTION for name in SECTION_MODULES]


def _timeouts(settings: StatsSettings) -> str:
    # In whole milliseconds and never 0: 0 would turn the timeout off.
    return (f"-c statement_timeout={max(1, round(settings.statement_timeout_seconds * 1000))} "
            f"-c lock_timeout={max(1, round(settings.lock_timeout_seconds * 1000))} "
            "-c default_transaction_read_only=on -c idle_in_transaction_session_timeout=60000")


def take_snapshot(cfg: FleetConfig, target: str, previous: Snapshot | None = None,
                  sections: list[Section] | None = None) -> Snapshot:
    """One snapshot of ``target``; ``previous`` (the last stored one) gives the rates."""
    settings = cfg.stats_for(target)
    sections = all_sections() if sections is None else sections
    started = time.monotonic()
    conn = connect(cfg.dsn_for(target, "monitor"), f"target {target}", retries=cfg.defaults.connect_retries,
                   error=StatsFailed, application_name=APPLICATION_NAME, autocommit=True,
                   options=_timeouts(settings))
    connect_seconds = time.monotonic() - started
    try:
        with conn:
            taken_at, version, role, sees_all = conn.execute(
                "SELECT now(), current_setting('server_version_num')::int, quote_ident(current_user), "
                "r.rolsuper OR pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') "
                "FROM pg_roles r WHERE r.rolname = current_user").fetchone()
            env = CollectEnv(server_version_num=version, top_n=settings.top_n, connect_seconds=connect_seconds,
                             settings=settings)
            snap = Snapshot(target=target, taken_at=taken_at, server_version_num=version,
                            connect_seconds=connect_seconds, duration_seconds=0.0)
            for section in sections:
                try:
                    with conn.transaction():
                        snap.sections[section.name] = section.collect(conn, env)
                except psycopg.Error as exc:
                    if conn.closed or conn.broken:
                        raise
                    snap.errors[section.name] = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    except psycopg.OperationalError as exc:
        raise StatsFailed(f"the connection to target {target} broke during the snapshot: {redact(str(exc).strip())}",
                          "check the server's log; the next snapshot retries") from None
    snap.duration_seconds = time.monotonic() - started
    judge(snap, previous, sections, settings)
    if not sees_all:
        # Without pg_read_all_stats every section still answers, but only about this role's own
        # sessions and statements: numbers that look complete and are not.
        snap.findings.append(Finding(
            "monitor_role_limited", "warning", target, role,
            f"the monitor role {role} is not a member of pg_monitor (nor pg_read_all_stats): it sees only "
            "its own sessions and statements, so connections, locks and top statements are incomplete",
            "Grant it pg_monitor (docs/findings.md#grants-a-pg_monitor-role), or set roles.monitor to a role that has it.",
            sql=f"GRANT pg_monitor TO {role}", section="database"))
    return snap


def judge(snap: Snapshot, previous: Snapshot | None, sections: list[Section], settings: StatsSettings) -> None:
    """Rates, samples and findings of ``snap`` (in place). Pure: no I/O."""
    th = settings.thresholds
    usable_prev = previous if previous is not None and previous.target == snap.target else None
    seconds = (snap.taken_at - usable_prev.taken_at).total_seconds() if usable_prev else 0.0
    snap.interval_seconds = seconds if usable_prev else None
    for section in sections:
        data = snap.sections.get(section.name)
        if data is None:
            continue
        prev_data = usable_prev.sections.get(section.name) if usable_prev else None
        snap.rates[section.name] = section.rates(prev_data, data, seconds) if prev_data is not None else {}
        snap.samples += section.samples(data, snap.rates[section.name])
        snap.findings += [replace(f, section=section.name)
                          for f in section.findings(snap.target, data, snap.rates[section.name], th)]
    snap.samples += [
        Sample("snapshot_duration_seconds", snap.duration_seconds, help="How long the stats snapshot took"),
        Sample("connect_seconds", snap.connect_seconds, help="How long the snapshot took to connect"),
        Sample("snapshot_sections_failed", float(len(snap.errors)), help="Sections of the snapshot that could not be collected"),
    ]
    if snap.connect_seconds > th.slow_connect_seconds:
        snap.findings.append(Finding(
            "slow_connect", "warning", snap.target, "",
            f"connecting took {snap.connect_seconds:.1f} s (threshold {th.slow_connect_seconds:g} s)",
            "Check the network path, DNS, the server's load and its authentication (LDAP/ident lookups, "
            "pg_hba.conf order); a connection pooler (PgBouncer) hides connect time from applications.",
            section="database"))
    for name, why in sorted(snap.errors.items()):
        snap.findings.append(Finding(
            "snapshot_incomplete", "warning", snap.target, name,
            f"the {name} section could not be collected: {why}",
            "Grant the monitor role pg_monitor (docs/findings.md#grants-a-pg_monitor-role); if it timed out, raise "
            "stats.statement_timeout_seconds (or stats.lock_timeout_seconds after a lock timeout) for this target.",
            section=name))


def snapshot_summary(snap: Snapshot) -> str:
    counts: dict[str, int] = {}
    for f in snap.findings:
        counts[f.severity] = counts.get(f.severity, 0) + 1
    found = ", ".join(f"{n} {sev}" for sev, n in sorted(counts.items())) or "no findings"
    return (f"stats snapshot of {snap.target} at {snap.taken_at.isoformat(timespec='seconds')}: "
            f"{snap.duration_seconds * 1000:.0f} ms, {found}")

