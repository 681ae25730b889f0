"""What raises an alert, from plain facts the Dagster layer gathers: finished runs, check
evaluations, and when each target last had a valid backup and a passing verification.

Each feature states its own silence rules (``Staleness``) in its Dagster spec; every condition
produces Observations for the same dispatcher.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from dbops_pipelines.alerts.dispatch import Observation
from dbops_pipelines.alerts.model import Alert
from dbops_pipelines.errors import DbopsError
from dbops_pipelines.redact import redact

EXCERPT_CHARS = 600

# What the operator should do, per condition (docs/alerts.md has the longer runbook).
WHAT_TO_DO = {
    "run_failed": "Open the run, read the failed step's error and its 'What to do' line, fix the cause, re-run the job.",
    "check_failed": "Open the check's latest evaluation; its findings name the backup and what differs. Do not rely on that backup until a fresh one verifies.",
    "backup_stale": "No valid backup within the RPO: check that the schedule is running, the daemon is up and the last runs succeeded; launch the backup job now.",
    "verification_stale": "No passing restore verification recently: check the verify schedule and launch the verify job now.",
    "store_unreadable": "The alert sensor cannot read where this is recorded (the backup store; for stats, the metrics database), "
                        "so it cannot tell whether it is fresh: check that it is reachable and that the code location's "
                        "environment has the backup key and the database password.",
    "stats_stale": "No stats snapshot recently: check that the stats_snapshots schedule is running, the daemon is up, the last "
                   "stats runs succeeded and the metrics database is reachable; launch the stats_snapshots job now.",
    "base_backup_stale": "No valid base backup recently: point-in-time recovery needs a recent one and WAL since it. Check "
                         "that base_backup_<target>_schedule is running and its last runs succeeded; launch "
                         "base_backup_<target> now (docs/pitr.md#in-dagster).",
}


def excerpt(text: str | None) -> str | None:
    if not text:
        return None
    text = redact(text.strip())
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + " …"


def run_url(ui_base_url: str, run_id: str | None) -> str | None:
    return f"{ui_base_url.rstrip('/')}/runs/{run_id}" if run_id else None


@dataclass(frozen=True)
class FinishedRun:
    run_id: str
    job_name: str         # what the operator sees: backup_app, or "backup of app" for a run from the asset page
    target: str
    feature: str          # the alert key: one alert per target and feature, whichever job ran it
    succeeded: bool
    ended_at: datetime
    error: str | None = None


def run_observations(runs: list[FinishedRun], ui_base_url: str) -> list[Observation]:
    """A failed run fires its feature's alert; the next successful run of that feature (from its
    schedule, a job or the asset page) resolves it."""
    out = []
    for run in sorted(runs, key=lambda r: r.ended_at):
        key = f"{run.target}/run_failed/{run.feature}"
        if run.succeeded:
            out.append(Observation(key, False))
            continue
        out.append(Observation(key, True, Alert(
            key=key, target=run.target, condition="run_failed", severity="critical",
            title=f"run of {run.job_name} failed",
            message=f"The run of job {run.job_name} for target {run.target} failed. {WHAT_TO_DO['run_failed']}",
            occurred_at=run.ended_at.isoformat(), run_id=run.run_id, run_url=run_url(ui_base_url, run.run_id),
            error_excerpt=excerpt(run.error),
        )))
    return out


@dataclass(frozen=True)
class CheckEvaluation:
    target: str
    check_name: str
    passed: bool
    severity: str          # "error" | "warn" as Dagster reports it
    run_id: str | None
    evaluated_at: datetime
    summary: str | None = None


def check_observations(evaluations: list[CheckEvaluation], ui_base_url: str) -> list[Observation]:
    """A failed check fires (a failed check does not fail its run, so run alerts miss it);
    the next passing evaluation of the same check resolves it."""
    out = []
    for ev in sorted(evaluations, key=lambda e: e.evaluated_at):
        key = f"{ev.target}/check_failed/{ev.check_name}"
        if ev.passed:
            out.append(Observation(key, False))
            continue
        out.append(Observation(key, True, Alert(
            key=key, target=ev.target, condition="check_failed",
            severity="warning" if ev.severity.lower().startswith("warn") else "critical",
            title=f"check {ev.check_name} failed",
            message=f"Check {ev.check_name} of {ev.target} failed. {WHAT_TO_DO['check_failed']}",
            occurred_at=ev.evaluated_at.isoformat(), run_id=ev.run_id, run_url=run_url(ui_base_url, ev.run_id),
            error_excerpt=excerpt(ev.summary),
        )))
    return out


@dataclass(frozen=True)
class Staleness:
    """A silence rule of one feature: ``condition`` fires when the newest ``what`` of ``target``
    is older than ``limit`` (or there is none)."""

    target: str
    condition: str        # e.g. "backup_stale"
    what: str             # e.g. "valid full backup"
    severity: str
    limit: timedelta


def _age(since: datetime | None, now: datetime) -> str:
    if since is None:
        return "never"
    hours = (now - since).total_seconds() / 3600
    return f"{hours:.1f} h ago" if hours < 72 else f"{hours / 24:.1f} days ago"


def staleness_observations(rule: Staleness, read_last: Callable[[], datetime | None], now: datetime) -> list[Observation]:
    """Silence is a failure too: fire when the newest ``rule.what`` is older than the limit, even
    if no run failed. ``read_last`` reads the store; when it cannot (``DbopsError``), the target can
    be judged neither fresh nor stale: a ``store_unreadable`` alert fires and the staleness alert
    is left as it was, never silently passed or falsely reported as "never"."""
    unreadable_key = f"{rule.target}/store_unreadable/{rule.condition}"
    try:
        last = read_last()
    except DbopsError as exc:
        return [Observation(unreadable_key, True, Alert(
            key=unreadable_key, target=rule.target, condition="store_unreadable", severity="critical",
            title=f"cannot read the store to judge: {rule.what}",
            message=f"{excerpt(exc.message)} {WHAT_TO_DO['store_unreadable']}", occurred_at=now.isoformat(),
        ))]
    key = f"{rule.target}/{rule.condition}"
    if last is not None and now - last <= rule.limit:
        return [Observation(unreadable_key, False), Observation(key, False)]
    hours = rule.limit.total_seconds() / 3600
    return [Observation(unreadable_key, False), Observation(key, True, Alert(
        key=key, target=rule.target, condition=rule.condition, severity=rule.severity,
        title=f"no {rule.what} within {hours:g} h",
        message=f"The newest {rule.what} of {rule.target} is from {_age(last, now)}; the limit is {hours:g} h. "
                f"{WHAT_TO_DO[rule.condition]}",
        occurred_at=now.isoformat(),
    ))]
