"""Stats snapshots in Dagster. Per target: a `stats` asset whose materializations carry the
numbers Dagster plots over time and a summary of top statements and findings, with one check per
snapshot section (statements, database, activity, tables, health) showing that section's findings.

One run per tick for the whole fleet, not one per target: the targets that share a schedule are
the assets of one multi-asset step, which snapshots them in parallel threads. A 5-minute schedule
then makes 288 runs a day whatever the fleet's size (a run per target would be 28,800 a day for
100 targets). The step is subsettable, so "Materialize" on one target's stats asset snapshots
that target alone. One unreachable target fails the run after every other target's snapshot is
kept, and the alert sensor alerts for that target only.

Findings alert one by one (one open alert per target, code and object) through this feature's
conditions, judged from the newest stored snapshot, and resolve when a newer snapshot no longer
has them; the section checks show them in the UI without alerting a second time.
"""


import hashlib
from collections import defaultdict
from datetime import datetime, timedelta, timezone

import dagster as dg

from dbops_pipelines.alerts.conditions import Staleness, excerpt, staleness_observations
from dbops_pipelines.alerts.dispatch import Observation
from dbops_pipelines.alerts.model import Alert
from dbops_pipelines.config import STATS_DEFAULTS, FleetConfig
from dbops_pipelines.context import FleetContext
from dbops_pipelines.defs import names
from dbops_pipelines.defs.names import STATS, STATS_REPORT
from dbops_pipelines.defs.resources import DbopsFleet
from dbops_pipelines.defs.spec import FeatureSpec, core_call, fail_loudly, fleet_context
from dbops_pipelines.errors import DbopsError
from dbops_pipelines.findings import Finding, by_severity, worst
from dbops_pipelines.redact import redact
from dbops_pipelines.stats.model import Snapshot
from dbops_pipelines.stats.service import open_store, snapshot_targets, store_report
from dbops_pipelines.stats.snapshot import SECTION_MODULES, snapshot_summary

# What Dagster plots for every snapshot (Overview → Metadata → Plots), by sample name.
PLOTTED = {
    "connections": ("client_connections", 1),
    "cache_hit_ratio": ("cache_hit_ratio", 1),
    "database_size_bytes": ("database_size_bytes", 1),
    "slowest_mean_statement_ms": ("statement_mean_seconds_max", 1000),
    "dead_tuples": ("top_tables_dead_tuples", 1),
    "replication_lag_bytes": ("replication_lag_bytes_max", 1),
    "statements_per_second": ("statements_calls_per_second", 1),
    "snapshot_ms": ("snapshot_duration_seconds", 1000),
}
TOP_STATEMENTS_SHOWN = 10


def check_name(section: str) -> str:
    return f"findings_{section}"


def applies(cfg: FleetConfig, target: str) -> bool:
    return cfg.metrics is not None and bool(cfg.stats_for(target).enabled)


def _plotted(snap: Snapshot) -> dict:
    out = {}
    for label, (sample, scale) in PLOTTED.items():
        value = snap.sample(sample)
        if value is not None:
            out[label] = dg.MetadataValue.float(round(value * scale, 6))
    return out


def _findings_md(findings: list[Finding]) -> str:
    if not findings:
        return "No findings."
    lines = ["| severity | code | object | what | what to do |", "|---|---|---|---|---|"]
    for f in by_severity(findings):
        todo = f.recommendation + (f" `{f.sql}`" if f.sql else "")
        lines.append(f"| {f.severity} | `{f.code}` | {_cell(f.object) or '-'} | {_cell(f.message)} | {_cell(todo)} |")
    return "\n".join(lines)


def _cell(text: str) -> str:
    return redact(text).replace("|", "\\|").replace("\n", " ")


def _summary_md(snap: Snapshot) -> str:
    top = sorted(snap.sections.get("statements", {}).get("top", []), key=lambda s: -(s.get("total_exec_ms") or 0))
    lines = [f"**{snapshot_summary(snap)}**", "", "### Top statements by total time"]
    if top:
        lines += ["| queryid | calls | total ms | mean ms | query |", "|---|---|---|---|---|"]
        lines += [f"| {s.get('queryid')} | {s.get('calls')} | {s.get('total_exec_ms', 0):.0f} | {s.get('mean_exec_ms', 0):.1f} | "
                  f"{_cell(str(s.get('query', ''))[:120])} |" for s in top[:TOP_STATEMENTS_SHOWN]]
    else:
        lines.append("none collected (see findings)")
    lines += ["", "### Findings", _findings_md(snap.findings)]
    if snap.errors:
        lines += ["", "### Sections not collected"] + [f"- {k}: {_cell(v)}" for k, v in sorted(snap.errors.items())]
    return "\n".join(lines)


def snapshot_metadata(snap: Snapshot, saved: bool) -> dict:
    return {
        **_plotted(snap),
        "taken_at": snap.taken_at.isoformat(),
        "findings": dg.MetadataValue.int(len([f for f in snap.findings if f.severity != "info"])),
        "kept_in_history": saved,
        "summary": dg.MetadataValue.md(_summary_md(snap)),
    }


def check_results(snap: Snapshot) -> list[dg.AssetCheckResult]:
    key = names.asset_key(snap.target, STATS)
    by_section: dict[str, list[Finding]] = defaultdict(list)
    for f in snap.findings:
        by_section[f.section].append(f)
    out = []
    for section in SECTION_MODULES:
        found = by_section.get(section, [])
        level = worst([f for f in found if f.severity != "info"])
        out.append(dg.AssetCheckResult(
            asset_key=key, check_name=check_name(section), passed=level is None,
            severity=dg.AssetCheckSeverity.ERROR if level == "critical" else dg.AssetCheckSeverity.WARN,
            description=f"{len(found)} finding(s)" if found else "no findings",
            metadata={"findings": dg.MetadataValue.md(_findings_md(found)),
                      "codes": dg.MetadataValue.json(sorted({f.code for f in found}))},
        ))
    return out


def _schedule_groups(cfg: FleetConfig, targets: list[str], schedule_of) -> dict[tuple[str, str], list[str]]:
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for t in targets:
        groups[schedule_of(cfg.stats_for(t))].append(t)
    return groups


def _group_name(base: str, cron: str, tz: str, default: bool) -> str:
    # The default schedule's job is plainly "stats_snapshots"; others are named by their schedule
    # (stable across reloads, unique per schedule).
    return base if default else f"{base}_" + hashlib.sha256(f"{cron}|{tz}".encode()).hexdigest()[:8]


def build_group(cfg: FleetConfig, name: str, cron: str, tz: str, targets: list[str], config_sha256: str) -> dg.Definitions:
    specs = []
    for t in targets:
        key = names.asset_key(t, STATS)
        s = cfg.stats_for(t)
        specs.append(dg.AssetSpec(
            key, group_name=t, kinds={"postgres"}, owners=cfg.defaults.owners,
            tags={names.TARGET_TAG: t, names.FEATURE_TAG: STATS},
            freshness_policy=dg.FreshnessPolicy.time_window(fail_window=timedelta(minutes=s.max_age_minutes)),
            description=(f"A stats snapshot of `{t}`: top statements, database counters, connections and locks, "
                         "tables and indexes, wraparound, replication and archiving; kept in the metrics database. "
                         "Metadata plots connections, cache hit ratio, size, the slowest mean statement, dead tuples, "
                         "replication lag and statements/s."),
        ))
    check_specs = [dg.AssetCheckSpec(check_name(section), asset=names.asset_key(t, STATS),
                                     description=f"Findings of the {section} section of the newest snapshot.",
                                     metadata={names.ALERTS_PER_FINDING: True})
                   for t in targets for section in SECTION_MODULES]

    # The step's name differs from the job's: Dagster wants op and job names apart.
    @dg.multi_asset(name=f"take_{name}", specs=specs, check_specs=check_specs, can_subset=True)
    def stats_snapshots(context: dg.AssetExecutionContext, dbops: DbopsFleet):
        cfg_now = dbops.config()
        # A check run alone (Execute on a check) snapshots its target too, but materializes nothing.
        chosen = sorted({k.path[0] for k in context.selected_asset_keys}
                        | {k.asset_key.path[0] for k in context.selected_asset_check_keys})
        with core_call(context):
            outcomes = snapshot_targets(cfg_now, chosen, save=True, log=lambda line: (
                context.log.error if line.startswith("ERROR") else context.log.info)(line))
        failed = []
        for outcome in outcomes:
            snap = outcome.snapshot
            if snap is not None:
                context.log.info(snapshot_summary(snap) + ("" if outcome.saved else " (NOT kept in history)"))
                key = names.asset_key(snap.target, STATS)
                if key in context.selected_asset_keys:
                    # Not kept: its numbers are shown, but it is not the feature's success for alerting.
                    yield dg.MaterializeResult(asset_key=key, metadata=snapshot_metadata(snap, outcome.saved),
                                               tags=None if outcome.saved else {names.INCOMPLETE_TAG: "not_kept_in_history"})
                selected_checks = context.selected_asset_check_keys
                for result in check_results(snap):
                    if dg.AssetCheckKey(result.asset_key, result.check_name) in selected_checks:
                        yield result
            if outcome.error is not None:
                failed.append(f"{outcome.target}: {redact(outcome.error.message)}"
                              + (f" (what to do: {outcome.error.hint})" if outcome.error.hint else ""))
        if failed:
            raise fail_loudly(f"{len(failed)} of {len(outcomes)} stats snapshot(s) failed or were not kept:\n"
                              + "\n".join(failed), "StatsFailed")

    job = dg.define_asset_job(
        name, selection=dg.AssetSelection.assets(*(s.key for s in specs)),
        description=f"Stats snapshots of {len(targets)} target(s) in one run, at `{cron}` ({tz}).",
        tags={names.FEATURE_TAG: STATS, names.CONFIG_TAG: config_sha256},
    )
    schedule = dg.ScheduleDefinition(
        name=f"{name}_schedule", job=job, cron_schedule=cron, execution_timezone=tz,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Snapshots {len(targets)} target(s) at `{cron}` ({tz}): one run per tick for all of them.",
    )
    return dg.Definitions(assets=[stats_snapshots], jobs=[job], schedules=[schedule])


def build_report_group(cfg: FleetConfig, name: str, cron: str, tz: str, targets: list[str],
                       config_sha256: str) -> dg.Definitions:
    """The daily report of each target (report_schedule), kept in the store beside the backups."""
    specs = [dg.AssetSpec(
        names.asset_key(t, STATS_REPORT), deps=[names.asset_key(t, STATS)], group_name=t,
        kinds={"html", names.storage_kind(cfg)}, owners=cfg.defaults.owners,
        tags={names.TARGET_TAG: t, names.FEATURE_TAG: STATS_REPORT},
        description=(f"A self-contained HTML report of `{t}` over the last {cfg.stats_for(t).report_window_hours:g} h "
                     "(top statements, database, table growth, vacuum activity, findings, charts), kept in the store "
                     "under reports/stats/; its location is in the metadata."),
    ) for t in targets]

    @dg.multi_asset(name=f"write_{name}", specs=specs, can_subset=True)
    def stats_reports(context: dg.AssetExecutionContext, dbops: DbopsFleet):
        ctx = fleet_context(context, dbops)
        end = datetime.now(timezone.utc)
        failed = []
        for t in sorted({k.path[0] for k in context.selected_asset_keys}):
            window = timedelta(hours=ctx.config.stats_for(t).report_window_hours)
            try:
                with core_call(context):
                    location, size = store_report(ctx, t, end, window)
            except dg.Failure as exc:
                failed.append(f"{t}: {exc.description}")
                continue
            context.log.info(f"report of {t} stored at {location}")
            yield dg.MaterializeResult(asset_key=names.asset_key(t, STATS_REPORT), metadata={
                "report": dg.MetadataValue.text(location), "bytes": dg.MetadataValue.int(size),
                "window": f"{(end - window).isoformat(timespec='minutes')} .. {end.isoformat(timespec='minutes')}"})
        if failed:
            raise fail_loudly(f"{len(failed)} stats report(s) failed:\n" + "\n".join(failed), "StatsFailed")

    job = dg.define_asset_job(name, selection=dg.AssetSelection.assets(*(s.key for s in specs)),
                              description=f"Stats reports of {len(targets)} target(s), at `{cron}` ({tz}).",
                              tags={names.FEATURE_TAG: STATS_REPORT, names.CONFIG_TAG: config_sha256})
    schedule = dg.ScheduleDefinition(name=f"{name}_schedule", job=job, cron_schedule=cron, execution_timezone=tz,
                                     default_status=dg.DefaultScheduleStatus.RUNNING,
                                     description=f"Writes the stats report of {len(targets)} target(s) at `{cron}` ({tz}).")
    return dg.Definitions(assets=[stats_reports], jobs=[job], schedules=[schedule])


def build_fleet(cfg: FleetConfig, targets: list[str], config_sha256: str) -> dg.Definitions:
    d = cfg.defaults.stats
    base = (d.schedule or STATS_DEFAULTS.schedule, d.timezone or STATS_DEFAULTS.timezone)
    base_report = (d.report_schedule or STATS_DEFAULTS.report_schedule, base[1])
    snapshots = _schedule_groups(cfg, targets, lambda s: (s.schedule, s.timezone))
    reports = _schedule_groups(cfg, targets, lambda s: (s.report_schedule, s.timezone))
    return dg.Definitions.merge(
        *(build_group(cfg, _group_name("stats_snapshots", cron, tz, (cron, tz) == base), cron, tz, group, config_sha256)
          for (cron, tz), group in sorted(snapshots.items())),
        *(build_report_group(cfg, _group_name("stats_reports", cron, tz, (cron, tz) == base_report), cron, tz, group,
                             config_sha256)
          for (cron, tz), group in sorted(reports.items())))


# --- alert conditions ---------------------------------------------------------------------

def finding_key(f: Finding) -> str:
    # One open alert per target, code and object; the section in the key lets a tick resolve
    # only what the sections it actually collected no longer find.
    return f"{f.target}/{STATS}/{f.section}/{f.code}/{f.object}"


def finding_alert(f: Finding, taken_at: datetime) -> Alert:
    todo = f.recommendation + (f"\nSQL: {f.sql}" if f.sql else "")
    return Alert(key=finding_key(f), target=f.target, condition=f.code, severity=f.severity,
                 title=f"{f.code}: {f.object}" if f.object else f.code,
                 message=f"{excerpt(f.message)}\nWhat to do: {excerpt(todo)} (runbook: docs/findings.md#{f.code})",
                 occurred_at=taken_at.isoformat())


def fleet_conditions(ctx: FleetContext, targets: list[str], now: datetime) -> list[Observation]:
    """Per target: no snapshot within max_age_minutes (silence), and each warning or critical
    finding of the newest snapshot, swept per section so a finding that is gone resolves. A stale
    newest snapshot cannot say what is still wrong, nor can a section it failed to collect: their
    findings are left as they were."""
    cfg = ctx.config
    try:
        # One attempt: the sensor's tick must stay well within Dagster's 60 s, whatever the
        # metrics database does; the next tick tries again.
        with open_store(cfg, for_writing=False, retries=0) as store:
            latest = store.latest_findings(targets)
        problem = None
    except DbopsError as exc:
        latest, problem = {}, exc
    out: list[Observation] = []
    for t in targets:
        limit = timedelta(minutes=cfg.stats_for(t).max_age_minutes)
        rule = Staleness(t, "stats_stale", "stats snapshot", "warning", limit)

        def read_last(t=t):
            if problem is not None:
                raise problem
            return latest[t][0] if t in latest else None

        out += staleness_observations(rule, read_last, now)
        if problem is None and t in latest and now - latest[t][0] <= limit:
            taken_at, findings = latest[t]
            out += [Observation(finding_key(f), True, finding_alert(f, taken_at))
                    for f in findings if f.severity != "info"]
            not_collected = {f.object for f in findings if f.code == "snapshot_incomplete"}
            out += [Observation(f"{t}/{STATS}/{section}/", False, sweep=True)
                    for section in SECTION_MODULES if section not in not_collected]
    return out


SPEC = FeatureSpec(name=STATS, build=None, applies=applies, build_fleet=build_fleet, fleet_conditions=fleet_conditions,
                   alert_conditions=(STATS, "stats_stale"))
