"""`dbops stats ...` and `dbops exporter`: the command-line face of stats snapshots.

    dbops stats TARGET [--json] [--no-save]                 one snapshot now
    dbops stats history TARGET [--since 6h] [--metric NAME] [--json]
    dbops stats report TARGET [--from T] [--to T] --out FILE.html
    dbops exporter [--listen 127.0.0.1:9187] [--once]

Exit codes as for every command (cli.py); `dbops stats` exits 0 when the snapshot was taken (and
kept, unless --no-save), whatever it found: findings are reported, alerting is the sensor's job.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime, timedelta, timezone

from dbops_pipelines.config import load_config
from dbops_pipelines.errors import DbopsError, MetricsStoreError
from dbops_pipelines.findings import by_severity
from dbops_pipelines.redact import redact
from dbops_pipelines.stats.model import Snapshot
from dbops_pipelines.stats.service import open_store, require_metrics, snapshot_targets
from dbops_pipelines.stats.snapshot import take_snapshot

SUBCOMMANDS = ("history", "report")
SUMMARY_STATEMENTS = 5
MAX_AGE_DAYS = 3650
# What `dbops stats history` lists per snapshot when no --metric is given.
HISTORY_COLUMNS = ("client_connections", "cache_hit_ratio", "statements_calls_per_second",
                   "statement_mean_seconds_max", "snapshot_duration_seconds")


class UsageError(DbopsError):
    """Bad usage of a stats command (exit 2)."""


def add_parsers(sub) -> None:
    s = sub.add_parser("stats", help="take a stats snapshot now; `stats history`, `stats report` read the history",
                       description=__doc__.split("\n\n")[1] if __doc__ else None)
    s.add_argument("what", metavar="TARGET | history | report")
    s.add_argument("target", nargs="?", help="the target, after history/report")
    s.add_argument("--json", action="store_true", help="the whole snapshot (or history) as JSON")
    s.add_argument("--no-save", action="store_true", help="do not keep the snapshot (nothing read or written in the metrics database)")
    s.add_argument("--since", help="history: how far back (30m, 6h, 2d; default 6h)")
    s.add_argument("--metric", help="history: one metric (a sample name, e.g. client_connections)")
    s.add_argument("--from", dest="start", metavar="T", help="report: start (ISO time, or an age like 24h; default 24h ago)")
    s.add_argument("--to", dest="end", metavar="T", help="report: end (ISO time or age; default now)")
    s.add_argument("--out", help="report: the HTML file to write")
    s.set_defaults(func=cmd_stats)

    e = sub.add_parser("exporter", help="serve /metrics for Prometheus from the stored snapshots (never queries the targets)")
    e.add_argument("--listen", default="127.0.0.1:9187", help="host:port (default 127.0.0.1:9187)")
    e.add_argument("--once", action="store_true", help="print the exposition once and exit")
    e.set_defaults(func=cmd_exporter)


def parse_age(text: str, flag: str) -> timedelta:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text or "")
    if not m:
        raise UsageError(f"{flag} {text!r} is not an age", "write e.g. 30m, 6h or 2d")
    seconds = float(m[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]]
    if not 0 < seconds <= MAX_AGE_DAYS * 86400:
        raise UsageError(f"{flag} {text!r} is out of range", f"give an age above 0 and at most {MAX_AGE_DAYS}d")
    return timedelta(seconds=seconds)


def parse_time(text: str, flag: str, now: datetime) -> datetime:
    """An ISO time (UTC unless it says otherwise) or an age before ``now``."""
    if re.fullmatch(r"\s*\d+(?:\.\d+)?\s*[smhd]\s*", text):
        return now - parse_age(text, flag)
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"{flag} {text!r} is neither an ISO time nor an age",
                         "write e.g. 2026-12-01T06:00 (UTC), 2026-12-01T06:00+01:00, or 24h") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _check_usage(args, known_targets=None) -> None:
    sub = args.what if args.what in SUBCOMMANDS and args.target else None
    allowed = {None: {"json", "no_save"}, "history": {"json", "since", "metric"}, "report": {"start", "end", "out"}}[sub]
    flags = {"json": "--json", "no_save": "--no-save", "since": "--since", "metric": "--metric",
             "start": "--from", "end": "--to", "out": "--out"}
    extra = [flag for attr, flag in flags.items() if getattr(args, attr) not in (None, False) and attr not in allowed]
    if extra:
        raise UsageError(f"{', '.join(extra)} cannot be used with `dbops stats {sub or 'TARGET'}`",
                         "see `dbops stats --help`")
    if sub is None and args.target:
        raise UsageError(f"unexpected {args.target!r} after the target", "`dbops stats TARGET`, `dbops stats history TARGET` "
                         "or `dbops stats report TARGET --out FILE.html`")
    if sub == "report" and not args.out:
        raise UsageError("`dbops stats report` needs --out FILE.html")
    if args.since is not None:
        parse_age(args.since, "--since")
    if args.what in SUBCOMMANDS and not args.target and known_targets is not None and args.what not in known_targets:
        raise UsageError(f"`dbops stats {args.what}` needs a TARGET", f"`dbops stats {args.what} TARGET ...`")
    now = datetime.now(timezone.utc)
    for flag, value in (("--from", args.start), ("--to", args.end)):
        if value is not None:
            parse_time(value, flag, now)


def cmd_stats(args) -> int:
    try:
        _check_usage(args)
    except UsageError as exc:
        _usage(exc)
        return 2
    cfg = load_config(args.config)
    try:
        _check_usage(args, cfg.targets)       # `stats history` alone: a usage error, unless a target is so named
    except UsageError as exc:
        _usage(exc)
        return 2
    if args.what in SUBCOMMANDS and args.target:
        cfg.target(args.target)
        return cmd_history(cfg, args) if args.what == "history" else cmd_report(cfg, args)
    target = args.what
    cfg.target(target)   # an unknown target is a clear error before anything connects
    if args.no_save:
        snap = take_snapshot(cfg, target)
        _print_snapshot(snap, args.json, note="not kept (--no-save)")
        return 0
    if cfg.metrics is None:
        snap = take_snapshot(cfg, target)
        _print_snapshot(snap, args.json, note="not kept")
        require_metrics(cfg)   # raises: says where history would go and how to configure it
    [outcome] = snapshot_targets(cfg, [target], save=True, log=lambda line: print(line, file=sys.stderr))
    if outcome.snapshot is not None:
        _print_snapshot(outcome.snapshot, args.json, note=None if outcome.saved else "NOT kept")
    if outcome.error is not None:
        raise outcome.error
    return 0


def _usage(exc: DbopsError) -> None:
    print(f"error: {exc.message}", file=sys.stderr)
    if exc.hint:
        print(f"  what to do: {exc.hint}", file=sys.stderr)


def _print_snapshot(snap: Snapshot, as_json: bool, note: str | None) -> None:
    if as_json:
        print(json.dumps({**snap.to_dict(), "kept": note is None}, indent=2, default=str))
        return
    print(f"{snap.target} at {snap.taken_at.isoformat(timespec='seconds')}: snapshot took "
          f"{snap.duration_seconds * 1000:.0f} ms (connect {snap.connect_seconds * 1000:.0f} ms)"
          + (f" — {note}" if note else " — kept in the metrics database"))
    for label, name, fmt in (("connections", "client_connections", "{:.0f}"), ("max connections", "max_connections", "{:.0f}"),
                             ("database size", "database_size_bytes", "{:,.0f} bytes"), ("cache hit ratio", "cache_hit_ratio", "{:.4f}"),
                             ("statements/s", "statements_calls_per_second", "{:.1f}"), ("commits/s", "commits_per_second", "{:.1f}"),
                             ("xid age (max)", "xid_age_max", "{:,.0f}")):
        value = snap.sample(name)
        if value is not None:
            print(f"  {label + ':':<18}{fmt.format(value)}")
    top = sorted(snap.sections.get("statements", {}).get("top", []), key=lambda s: -(s.get("total_exec_ms") or 0))
    if top:
        print("  top statements by total time:")
        for s in top[:SUMMARY_STATEMENTS]:
            query = " ".join(str(s.get("query", "")).split())[:70]
            print(f"    {s.get('total_exec_ms', 0):>10.0f} ms  {s.get('calls', 0):>8} calls  {query}")
    for name, why in sorted(snap.errors.items()):
        print(f"  section {name} not collected: {redact(why)}")
    if not snap.findings:
        print("  no findings")
    for f in by_severity(snap.findings):
        print(f"  [{f.severity}] {f.code} {f.object}: {redact(f.message)}")
        print(f"      what to do: {f.recommendation}")
        if f.sql:
            print(f"      sql: {f.sql}")


def cmd_history(cfg, args) -> int:
    now = datetime.now(timezone.utc)
    since = now - parse_age(args.since or "6h", "--since")
    with open_store(cfg, for_writing=False) as store:
        if args.metric:
            rows = store.labelled_series(args.target, args.metric, since)   # a labelled metric: every series
            if not rows and args.metric not in store.metrics(args.target):
                known = ", ".join(store.metrics(args.target)) or "none yet"
                raise DbopsError(f"no metric {args.metric!r} for {args.target}", f"metrics recorded: {known}")
            if args.json:
                print(json.dumps([{"taken_at": t.isoformat(), "labels": labels, "value": v} for t, labels, v in rows],
                                 indent=2))
            else:
                for t, labels, v in rows:
                    shown = "{" + ", ".join(f"{k}={val!r}" for k, val in sorted(labels.items())) + "}" if labels else ""
                    print(f"{t.isoformat(timespec='seconds')}  {v:g}  {shown}".rstrip())
            return 0
        columns = {name: dict(store.series(args.target, name, since)) for name in HISTORY_COLUMNS}
    times = sorted({t for series in columns.values() for t in series})
    if args.json:
        print(json.dumps([{"taken_at": t.isoformat(), **{n: columns[n].get(t) for n in HISTORY_COLUMNS}} for t in times], indent=2))
        return 0
    if not times:
        print(f"no snapshots of {args.target} since {since.isoformat(timespec='seconds')}")
        return 0
    print("taken_at                   " + "  ".join(f"{n:>22}" for n in HISTORY_COLUMNS))
    for t in times:
        print(f"{t.isoformat(timespec='seconds'):<27}" + "  ".join(
            f"{columns[n][t]:>22.4g}" if columns[n].get(t) is not None else f"{'-':>22}" for n in HISTORY_COLUMNS))
    return 0


def cmd_report(cfg, args) -> int:
    from dbops_pipelines.stats.report import write_report

    now = datetime.now(timezone.utc)
    try:
        start = parse_time(args.start, "--from", now) if args.start else now - timedelta(hours=24)
        end = parse_time(args.end, "--to", now) if args.end else now
    except UsageError as exc:
        _usage(exc)
        return 2
    if start >= end:
        _usage(UsageError(f"--from ({start.isoformat(timespec='minutes')}) must be before --to "
                          f"({end.isoformat(timespec='minutes')})"))
        return 2
    with open_store(cfg, for_writing=False) as store:
        path = write_report(store, args.target, start, end, args.out)
    print(f"report of {args.target} ({start.isoformat(timespec='minutes')} .. {end.isoformat(timespec='minutes')}) written to {path}")
    return 0


def cmd_exporter(args) -> int:
    from dbops_pipelines.stats.exporter import parse_listen, render, serve

    try:
        parse_listen(args.listen)
    except DbopsError as exc:
        _usage(exc)
        return 2
    cfg = load_config(args.config)
    require_metrics(cfg)
    if args.once:
        text = render(cfg).decode()
        sys.stdout.write(text)
        if "dbops_stats_exporter_up 0.0" in text:
            raise MetricsStoreError("the metrics database did not answer: only dbops_stats_exporter_up 0 was exported",
                                    "check metrics.dsn, that the database is up, and its password (PGPASSWORD or a PGPASSFILE)")
        return 0
    serve(cfg, args.listen, on_ready=lambda url: print(f"serving {url} (Ctrl-C stops)", file=sys.stderr, flush=True))
    return 0
