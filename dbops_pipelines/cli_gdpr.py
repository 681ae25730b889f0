"""`dbops gdpr ...`: GDPR cleanup from the command line (docs/gdpr.md).

    dbops gdpr cleanup TARGET [--dry-run] [--json]

The dry run reads only (as the target's backup role); the cleanup connects as the target's
`cleanup` role (roles.cleanup), the one role allowed to change rows. Exit 0 when the cleanup ran
(rows other sessions held to the end are reported and left for the next run), 1 when it failed.
"""

from __future__ import annotations

import json
import sys

from dbops_pipelines.config import load_config
from dbops_pipelines.gdpr.service import cleanup_target


def add_parsers(sub) -> None:
    g = sub.add_parser("gdpr", help="GDPR cleanup of soft-deleted people (docs/gdpr.md)").add_subparsers(dest="sub", required=True)
    c = g.add_parser("cleanup", help="delete (or anonymize) what was soft-deleted longer ago than the grace period")
    c.add_argument("target")
    c.add_argument("--dry-run", action="store_true", help="count what would go, per table, with sample keys; change nothing")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_cleanup)


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
