"""`dbops`: the operators' and scripts' face of the core. Argument parsing and printing only.

Exit codes: 0 success, 1 the operation failed (the message says what to do) or, for `verify`,
the backup did not verify; 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from dbops_pipelines import fleet
from dbops_pipelines.backup.catalog import find_backup, list_backups
from dbops_pipelines.backup.crypto import generate_key
from dbops_pipelines.progress import Progress
from dbops_pipelines.backup.integrity import check_backup
from dbops_pipelines.config import load_config
from dbops_pipelines.redact import redact
from dbops_pipelines.errors import DbopsError
from dbops_pipelines.restore import restore_backup
from dbops_pipelines.verification.runner import verify_backup


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


class ProgressPrinter:
    """A live line on a terminal; a line every few seconds when stderr is a file or pipe."""

    def __init__(self, verb: str):
        self.verb = verb
        self.tty = sys.stderr.isatty()
        self.interval = 1.0 if self.tty else 10.0

    def __call__(self, p: Progress) -> None:
        text = f"{self.verb}: {human_bytes(p.raw_bytes)} read, {human_bytes(p.stored_bytes)} stored, {human_bytes(p.rate)}/s"
        if self.tty:
            print(f"\r{text}\033[K", end="", file=sys.stderr, flush=True)
        else:
            print(text, file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def _warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr)


def cmd_keygen(args) -> int:
    print(generate_key())
    return 0


def cmd_backup(args) -> int:
    cfg = load_config(args.config)
    printer = ProgressPrinter(f"backup {args.target}")
    t0 = time.monotonic()
    manifest = fleet.backup_target(cfg, args.target, args.kind, tuple(args.table), progress=printer,
                                   on_warning=_warn, progress_interval=printer.interval)
    printer.done()
    print(f"backup {manifest.backup_id} complete: {human_bytes(manifest.raw_bytes)} dumped, "
          f"{human_bytes(manifest.stored_bytes)} stored at {manifest.location} in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    print(manifest.backup_id)
    return 0


def cmd_backups_list(args) -> int:
    cfg = load_config(args.config)
    entries = list_backups(fleet.fleet_store(cfg), args.target)
    if args.json:
        print(json.dumps([e.to_dict() for e in entries], indent=2))
        return 0
    if not entries:
        print("no backups")
        return 0
    print(f"{'ID':<36} {'KIND':<7} {'STATUS':<11} {'STARTED (UTC)':<20} {'SIZE':>10}  {'ROWS':>10}  VERIFIED")
    for e in entries:
        d = e.to_dict()
        v = e.verification
        verified = f"{v['outcome']} {v['verified_at'][:16]}" if v else "never"
        print(f"{e.backup_id:<36} {d['kind'] or '-':<7} {e.status:<11} {e.started_at:%Y-%m-%d %H:%M:%S}  "
              f"{human_bytes(d['size_bytes'] or 0):>10}  {d['total_rows'] if d['total_rows'] is not None else '-':>10}  {verified}")
    return 0


def cmd_restore(args) -> int:
    cfg = load_config(args.config)
    printer = ProgressPrinter(f"restore {args.backup_id}")
    result = restore_backup(fleet.fleet_store(cfg), args.backup_id, fleet.read_keys(cfg), args.to,
                            tables=args.table, jobs=args.jobs, clean=args.clean,
                            pg_bin_dir=cfg.defaults.pg_bin_dir, progress=printer, on_warning=_warn,
                            progress_interval=printer.interval)
    printer.done()
    print(f"restored {args.backup_id} into {redact(args.to)}: {human_bytes(result.raw_bytes)} in {result.seconds:.1f} s")
    return 0


def cmd_check(args) -> int:
    cfg = load_config(args.config)
    store = fleet.fleet_store(cfg)
    entry = find_backup(store, args.backup_id)
    report = check_backup(store, entry.manifest, fleet.read_keys(cfg), cfg.defaults.pg_bin_dir)
    print(f"backup {report.backup_id} is intact: sha256 verified, {report.toc_entries} archive entries, "
          f"{len(report.tables_with_data)} tables with data")
    return 0


def cmd_verify(args) -> int:
    cfg = load_config(args.config)
    log = (lambda msg: None) if args.json else (lambda msg: print(msg, file=sys.stderr))
    report = verify_backup(cfg, args.target, args.backup, log=log)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for t in report.tables:
            mark = "ok" if t.ok else "MISMATCH"
            print(f"  {t.table:<40} expected {t.expected_rows:>10}  actual {t.actual_rows if t.actual_rows is not None else '-':>10}  "
                  f"checksum {t.checksum:<11} {mark}")
        for s in report.sanity:
            print(f"  sanity {s['name']}: {'ok' if s['passed'] else 'FAILED'} (value {s['value']!r}, expected {s['expect']!r})")
        for f in report.findings:
            print(f"  {f.severity.upper()}: {f.message}")
        rto = f"{report.rto_seconds:.1f} s" if report.rto_seconds is not None else "n/a"
        print(f"{report.summary()}\n  RTO {rto} (objective {report.rto_objective_seconds} s), scratch database "
              f"{report.scratch_database} on {report.server} dropped")
    return 0 if report.passed else 1


def cmd_retention(args) -> int:
    cfg = load_config(args.config)
    outcome = fleet.apply_retention(cfg, args.target, dry_run=args.dry_run)
    if args.json:
        print(json.dumps({**outcome.plan.to_dict(), "dry_run": args.dry_run, "deleted": outcome.deleted, "swept": outcome.swept}, indent=2))
    else:
        print(outcome.plan.summary())
        print("dry run: nothing deleted" if args.dry_run else f"deleted {len(outcome.deleted)} backup(s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dbops", description="PostgreSQL backups for a fleet (see docs/cli.md)")
    p.add_argument("--config", help="fleet config (default: $DBOPS_CONFIG or ./dbops.yaml)")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("keygen", help="print a new base64 encryption key").set_defaults(func=cmd_keygen)

    b = sub.add_parser("backup", help="back up a target now; prints the new backup id")
    b.add_argument("target")
    b.add_argument("--kind", choices=["full", "schema", "tables"])
    b.add_argument("--table", action="append", default=[], help="schema.table (repeatable; implies --kind tables)")
    b.set_defaults(func=cmd_backup)

    bl = sub.add_parser("backups", help="inspect stored backups").add_subparsers(dest="sub", required=True)
    ls = bl.add_parser("list", help="list backups, newest first")
    ls.add_argument("target", nargs="?")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_backups_list)

    r = sub.add_parser("restore", help="restore a backup into a database")
    r.add_argument("backup_id")
    r.add_argument("--to", required=True, metavar="DSN", help="destination database (must exist)")
    r.add_argument("--table", action="append", default=[], help="restore only schema.table (repeatable)")
    r.add_argument("--jobs", type=int, default=1, help="parallel pg_restore jobs (stages the dump in a private temp file)")
    r.add_argument("--clean", action="store_true", help="drop objects before recreating them")
    r.set_defaults(func=cmd_restore)

    c = sub.add_parser("check", help="re-read a stored backup: sha256, decryption, archive listing")
    c.add_argument("backup_id")
    c.set_defaults(func=cmd_check)

    v = sub.add_parser("verify", help="restore a backup into a scratch database and compare it with its manifest")
    v.add_argument("target")
    v.add_argument("--backup", help="backup id (default: the newest valid backup of the target)")
    v.add_argument("--json", action="store_true", help="print the full report")
    v.set_defaults(func=cmd_verify)

    rt = sub.add_parser("retention", help="apply the retention policy (see --dry-run)")
    rt.add_argument("target", nargs="?")
    rt.add_argument("--dry-run", action="store_true", help="show the plan, delete nothing")
    rt.add_argument("--json", action="store_true")
    rt.set_defaults(func=cmd_retention)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "table", None) and args.command == "backup" and not args.kind:
        args.kind = "tables"
    if args.command == "restore" and args.jobs < 1:
        print("error: --jobs must be at least 1", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except DbopsError as exc:
        print(f"\nerror: {redact(exc.message)}", file=sys.stderr)
        if exc.hint:
            print(f"  what to do: {exc.hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: what was under way was stopped and nothing half-done was recorded", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
