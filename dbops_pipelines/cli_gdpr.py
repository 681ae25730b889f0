"""`dbops gdpr ...`: GDPR cleanup from the command line (docs/gdpr.md).

    dbops gdpr cleanup TARGET [--dry-run] [--json]
    dbops gdpr export TARGET --subject ID --out FILE.json [--force] [--json]
    dbops gdpr reapply TARGET --since TIMESTAMP [--to DSN] [--json]
    dbops gdpr ledger TARGET [--since TIMESTAMP] [--json]

The dry run reads only (as the target's backup role); the cleanup connects as the target's
`cleanup` role (roles.cleanup), the one role allowed to change rows. Exit 0 when the cleanup ran
(rows other sessions held to the end are reported and left for the next run), 1 when it failed.
The export (Art. 15 / 20) reads only, as the backup role, in one snapshot, and writes every row of
one person to FILE.json (mode 0600, atomically); exit 1 with nothing written for an unknown person.
`reapply` erases again, after a restore done by other means, everyone the erasure ledger records
since the backup was taken (exit 1 when any entry could not be re-applied); `ledger` lists it.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone

from dbops_pipelines.config import load_config
from dbops_pipelines.gdpr.export import check_out, export_subject, write_export
from dbops_pipelines.gdpr.service import cleanup_target, ledger_of, reapply_target


def add_parsers(sub) -> None:
    g = sub.add_parser("gdpr", help="GDPR cleanup of soft-deleted people (docs/gdpr.md)").add_subparsers(dest="sub", required=True)
    c = g.add_parser("cleanup", help="delete (or anonymize) what was soft-deleted longer ago than the grace period")
    c.add_argument("target")
    c.add_argument("--dry-run", action="store_true", help="count what would go, per table, with sample keys; change nothing")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_cleanup)
    e = g.add_parser("export", help="write every row of one person to a JSON file (GDPR Art. 15 / 20)")
    e.add_argument("target")
    e.add_argument("--subject", required=True, metavar="ID",
                   help="the primary key of the person's row in gdpr.subject_table (composite: a JSON array, e.g. '[\"eu\", 42]')")
    e.add_argument("--out", required=True, metavar="FILE.json", help="where to write the export (mode 0600)")
    e.add_argument("--force", action="store_true", help="replace --out if it exists")
    e.add_argument("--json", action="store_true", help="print the manifest (tables searched, row counts) as JSON")
    e.set_defaults(func=cmd_export)
    r = g.add_parser("reapply", help="erase again everyone the ledger records as erased since TIMESTAMP (after a restore)")
    r.add_argument("target")
    r.add_argument("--since", required=True, type=_timestamp, metavar="TIMESTAMP",
                   help="ISO 8601, e.g. 2026-11-24T02:00:00Z (UTC when no zone): when the restored backup was taken")
    r.add_argument("--to", metavar="DSN", help="a restored copy elsewhere (default: the target itself, as roles.cleanup)")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_reapply)
    lg = g.add_parser("ledger", help="list the erasure ledger's entries after checking every one of them")
    lg.add_argument("target")
    lg.add_argument("--since", type=_timestamp, metavar="TIMESTAMP", help="only entries from then on")
    lg.add_argument("--json", action="store_true")
    lg.set_defaults(func=cmd_ledger)


def _timestamp(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time (e.g. 2026-11-24T02:00:00Z)") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def cmd_reapply(args) -> int:
    result = reapply_target(load_config(args.config), args.target, args.since, to_dsn=args.to,
                            log=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.summary())
    print_reapply_problems(result)
    return 0 if result.complete else 1


def print_reapply_problems(result) -> None:
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    for b in result.blocked[:5]:
        print(f"error: ledger entry {b['seq']} ({b['table']}, {b['people']} people) was NOT re-applied: {b['why']}",
              file=sys.stderr)
    if result.blocked:
        more = len(result.blocked) - 5
        print((f"error: and {more} more (--json lists them all)\n" if more > 0 else "")
              + "  what to do: the people named are back in this database; see docs/gdpr.md#after-a-restore",
              file=sys.stderr)


def cmd_ledger(args) -> int:
    reading = ledger_of(load_config(args.config), args.target, args.since)
    if args.json:
        print(json.dumps({"target": args.target, "entries_total": reading.total, "checked": reading.checked,
                          "void": sorted(reading.voided), "notes": reading.notes,
                          "entries": [e.summary() for e in reading.entries]}, indent=2))
        return 0
    print(f"erasure ledger of {args.target}: {reading.total} entries, the {len(reading.entries)} listed authenticated "
          "and chained")
    void = reading.voided
    for e in reading.entries:
        if e.kind == "outcome":
            print(f"  {e.seq:>6}  {e.at:%Y-%m-%d %H:%M:%S}Z  outcome: "
                  + (f"entries {', '.join(map(str, e.void))} did not commit" if e.void else "every batch before committed"))
            continue
        rows = ", ".join(f"{t} {a} {n}" for t, acts in sorted(e.rows.items()) for a, n in sorted(acts.items()))
        print(f"  {e.seq:>6}  {e.at:%Y-%m-%d %H:%M:%S}Z  run {e.run_id[:12]}  {e.table}: {len(e.keys)} people ({rows})"
              + ("  [did not commit: not re-applied]" if e.seq in void else ""))
    for note in reading.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def cmd_cleanup(args) -> int:
    cfg = load_config(args.config)
    outcome = cleanup_target(cfg, args.target, dry=args.dry_run,
                             log=lambda line: print(line, file=sys.stderr, flush=True))
    if args.dry_run:
        _print_plan(outcome, args.json)
        return 0
    if args.json:
        print(json.dumps(outcome.to_dict(), indent=2))
    else:
        print(f"cleanup of {args.target}: removed what was soft-deleted before {outcome.cutoff.isoformat(timespec='seconds')} "
              f"({outcome.batches} batches, {outcome.passes} passes)")
        for (table, action), rows in sorted(outcome.removed.items()):
            print(f"  {table}: {rows} rows {'deleted' if action == 'delete' else 'anonymized'}")
    for table, entries in sorted(outcome.blocked.items()):
        print(f"warning: {table}: {len(entries)} people could not be removed: {entries[0]['why']}"
              + (f" (and {len(entries) - 1} more)" if len(entries) > 1 else "")
              + " — see docs/gdpr.md#when-a-person-cannot-be-removed", file=sys.stderr)
    for table, why in sorted(outcome.skipped.items()):
        print(f"warning: {table} was not cleaned: {why}", file=sys.stderr)
    for table, rows in sorted(outcome.still_locked.items()):
        print(f"warning: {table}: {rows} eligible rows were held by other sessions to the end and are left for the "
              "next run", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    cfg = load_config(args.config)
    check_out(args.out, args.force)          # refuse an existing file before reading anything
    export = export_subject(cfg, args.target, args.subject)
    path = write_export(export, args.out, force=args.force)
    # Never the rows, nor the subject's key: stdout is for the operator's log, the file is for the person.
    if args.json:
        print(json.dumps({"target": export.target, "subject_table": export.subject_table, "out": str(path),
                          "exported_at": export.exported_at.isoformat(), **export.manifest()}, indent=2))
    else:
        print(f"{export.summary()} to {path}")
    return 0


def _print_plan(plan, as_json: bool) -> None:
    if as_json:
        print(json.dumps({**plan.to_dict(), "dry_run": True}, indent=2, default=str))
        return
    print(f"dry run for {plan.target}: would remove what was soft-deleted before "
          f"{plan.cutoff.isoformat(timespec='seconds')} (grace {plan.grace_days} days); nothing was changed")
    for t in plan.tables:
        sample = f" (e.g. keys {', '.join(str(k[0] if len(k) == 1 else tuple(k)) for k in t.sample_keys)})" if t.sample_keys else ""
        print(f"  {t.table}: {t.rows} rows would be {'deleted' if t.action == 'delete' else t.action + ' (kept)'}"
              f"{sample} — {t.why}")
    for table, why in sorted(plan.skipped.items()):
        print(f"  skipped {table}: {why}")
    for link in plan.unindexed:
        print(f"  note: no index on {link}: each delete scans that table (CREATE INDEX CONCURRENTLY on those columns)")
