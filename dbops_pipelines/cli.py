"""`dbops`: the operators' and scripts' face of the core. Argument parsing and printing only.

Exit codes: 0 success, 1 the operation failed (the message says what to do) or, for `verify`,
the backup did not verify, for `alerts`, alerts are open or the alert sensor is not running; 2 bad usage (including a malformed --to); 130 interrupted by Ctrl-C,
143 by SIGTERM (children stopped, nothing half-done kept); 141 the reader of stdout went away.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import sys
import time
import traceback
from datetime import datetime, timedelta, timezone

import psycopg

from dbops_pipelines import cli_basebackup, cli_gdpr, cli_pitr, cli_stats, cli_wal, fleet
from dbops_pipelines.cli_gdpr import print_reapply_problems
from dbops_pipelines.alerts.board import BOARD_KEY, STALE_AFTER_INTERVALS, read_open_alerts
from dbops_pipelines.backup.catalog import find_backup
from dbops_pipelines.backup.migrate import migrate_target
from dbops_pipelines.backup.crypto import generate_key
from dbops_pipelines.progress import Progress
from dbops_pipelines.backup.integrity import check_backup
from dbops_pipelines.config import load_config
from dbops_pipelines.context import FleetContext
from dbops_pipelines.inventory import inventory
from dbops_pipelines.redact import redact
from dbops_pipelines.errors import DbopsError
from dbops_pipelines.gdpr.service import reapply_after_restore
from dbops_pipelines.interrupts import sigterm_as_interrupt
from dbops_pipelines.pgtools import parse_dsn
from dbops_pipelines.gdpr.mask import MaskJob, mask_restored, prepare_masking
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


def _context(args) -> FleetContext:
    """Built once per command: the config snapshot, the store, the keys."""
    return FleetContext(load_config(args.config))


def cmd_backup(args) -> int:
    ctx = _context(args)
    printer = ProgressPrinter(f"backup {args.target}")
    t0 = time.monotonic()
    manifest = fleet.backup_target(ctx, args.target, args.kind, tuple(args.table), progress=printer,
                                   on_warning=_warn, progress_interval=printer.interval)
    printer.done()
    print(f"backup {manifest.backup_id} complete: {human_bytes(manifest.raw_bytes)} dumped, "
          f"{human_bytes(manifest.stored_bytes)} stored at {manifest.location} in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    print(manifest.backup_id)
    return 0


def cmd_backups_list(args) -> int:
    ctx = _context(args)
    if args.target:
        ctx.config.target(args.target)
    entries = inventory(ctx, args.target)
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
    for e in entries:
        if e.problem:
            print(f"warning: {e.backup_id}: {redact(e.problem)}", file=sys.stderr)
    return 0


def cmd_restore(args) -> int:
    ctx = _context(args)
    cfg = ctx.config
    printer = ProgressPrinter(f"restore {args.backup_id}")
    manifest = find_backup(ctx.store, ctx.read_keys, args.backup_id).manifest
    masking = prepare_masking(cfg, manifest, args.table) if args.anonymize else None   # fails before the restore
    result = restore_backup(ctx.store, manifest, ctx.read_keys, args.to,
                            tables=args.table, jobs=args.jobs, clean=args.clean,
                            pg_bin_dir=cfg.defaults.pg_bin_dir, progress=printer, on_warning=_warn,
                            progress_interval=printer.interval)
    printer.done()
    print(f"restored {args.backup_id} into {redact(args.to)}: {human_bytes(result.raw_bytes)} in {result.seconds:.1f} s")
    try:
        complete = _reapply_erasures(ctx, manifest, args.to, partial=bool(args.table))
    finally:
        _mask_copy(masking, args)   # whatever happened to the erasures, the copy must not stay unmasked
    return 0 if complete else 1


def _mask_copy(masking: MaskJob | None, args) -> None:
    """restore --anonymize: mask the restored copy (docs/gdpr.md#masked-copies-for-staging)."""
    if masking is None:
        return
    masked = mask_restored(masking, args.to, args.backup_id, log=lambda line: print(line, file=sys.stderr), warn=_warn)
    for note in masked.notes:
        _warn(note)
    print(masked.summary())


def _reapply_erasures(ctx: FleetContext, manifest, to_dsn: str, partial: bool) -> bool:
    """Everyone erased since the backup was taken is erased again in the restored copy (the GDPR
    erasure ledger, docs/gdpr.md#after-a-restore). False when some erasure could not be."""
    try:
        reapplied = reapply_after_restore(ctx, manifest, to_dsn, log=lambda line: print(line, file=sys.stderr),
                                          partial=partial)
    except DbopsError as exc:
        raise DbopsError(f"restored {manifest.backup_id}, but the erasures recorded since it was taken were NOT "
                         f"re-applied: {exc.message}",
                         (exc.hint or "fix the cause") + f"; then run `dbops gdpr reapply {manifest.target} --since "
                         f"{manifest.started_at} --to <the restored database>` before anyone uses the copy") from None
    if reapplied is None:
        return True
    print(reapplied.summary())
    print_reapply_problems(reapplied)
    return reapplied.complete


def cmd_check(args) -> int:
    ctx = _context(args)
    entry = find_backup(ctx.store, ctx.read_keys, args.backup_id)
    report = check_backup(ctx.store, entry.manifest, ctx.read_keys, ctx.config.defaults.pg_bin_dir)
    print(f"backup {report.backup_id} is intact: sha256 verified, {report.toc_entries} archive entries, "
          f"{len(report.tables_with_data)} tables with data")
    return 0


def cmd_verify(args) -> int:
    log = (lambda msg: None) if args.json else (lambda msg: print(msg, file=sys.stderr))

    def not_run(outcome: str, error: str, hint: str | None) -> None:
        # JSON in every outcome: scripts parse stdout whatever happened.
        print(json.dumps({"target": args.target, "backup_id": args.backup, "outcome": outcome, "passed": False,
                          "error": redact(error), "what_to_do": hint}, indent=2), flush=True)

    try:
        report = verify_backup(_context(args), args.target, args.backup, log=log)
    except DbopsError as exc:
        if not args.json:
            raise
        not_run("not run", exc.message, exc.hint)
        return 1
    except KeyboardInterrupt:   # Ctrl-C or SIGTERM: cleaned up by now; main() gives the exit code
        if args.json:
            not_run("interrupted", "the verification was interrupted; its scratch database was dropped and "
                    "nothing was recorded", "run it again when ready")
        raise
    except Exception as exc:
        if args.json:
            not_run("not run", f"unexpected error {type(exc).__name__}: {exc}", "this is a bug in dbops; report it")
        raise
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
        if report.server_notice:  # about where it ran, not the backup: the exit code does not change
            print(f"  WARNING: {redact(report.server_notice)}")
        rto = f"{report.rto_seconds:.1f} s" if report.rto_seconds is not None else "n/a"
        role = f" ({report.server_role.replace('_', ' ')})" if report.server_role else ""
        print(f"{report.summary()}\n  RTO {rto} (objective {report.rto_objective_seconds} s), scratch database "
              f"{report.scratch_database} on {report.server}{role} dropped")
    return 0 if report.passed else 1


def cmd_retention(args) -> int:
    ctx = _context(args)
    if args.target:
        ctx.config.target(args.target)
    outcome = fleet.apply_retention(ctx, args.target, dry_run=args.dry_run)
    if args.json:
        print(json.dumps({**outcome.plan.to_dict(), "dry_run": args.dry_run, "deleted": outcome.deleted, "swept": outcome.swept}, indent=2))
    else:
        print(outcome.plan.summary())
        print("dry run: nothing deleted" if args.dry_run else f"deleted {len(outcome.deleted)} backup(s)")
    for target, why in outcome.blocked.items():
        print(f"error: retention of {target} stopped, nothing of it deleted: {redact('; '.join(why))}\n"
              "  what to do: find out why these backups cannot be read or trusted (see `dbops backups list`), fix or "
              "remove them by hand, then run retention again", file=sys.stderr)
    return 1 if outcome.blocked else 0


def cmd_store_migrate(args) -> int:
    ctx = _context(args)
    failed = False
    for target in sorted(ctx.config.targets):
        result = migrate_target(ctx.store, ctx.read_keys, target, log=lambda m: print(m, file=sys.stderr))
        print(f"{target}: moved {len(result.moved)} backup(s)" + (f", left {len(result.left)}" if result.left else ""))
        for bid, why in result.left.items():
            failed = True
            print(f"  left {bid}: {redact(why)}", file=sys.stderr)
    return 1 if failed else 0


def _age(d: timedelta) -> str:
    s = max(0.0, d.total_seconds())   # a clock a little ahead of the sensor's is not a negative age
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{s / 60:.0f} min"
    if s < 48 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


_SENSOR_HINT = ("turn on dbops_alerts in the Dagster UI (Automation) and check that the Dagster daemon runs "
                "(Deployment -> Daemons); if it is on, its tick log says why its ticks fail")


def cmd_alerts(args) -> int:
    """Open alerts as the alert sensor last published them (the board in the store), most severe
    and oldest first. Exit 0: no open alert and the sensor is publishing; 1: an alert is open, or
    the board is missing or stale (the sensor does not appear to be running)."""
    ctx = _context(args)
    now = datetime.now(timezone.utc)
    try:
        board = read_open_alerts(ctx.store)
    except DbopsError as exc:
        if not args.json:
            raise
        print(json.dumps({"published_at": None, "published_seconds_ago": None, "sensor_interval_seconds": None,
                          "sensor_running": None, "problem": redact(exc.message), "what_to_do": exc.hint,
                          "alerts": []}, indent=2))
        return 1
    if board is None:
        problem = (f"no alert board at {ctx.store.location(BOARD_KEY)}: the alert sensor does not appear to be "
                   "running (it has never published to this store), so open alerts cannot be listed")
    elif board.is_stale(now):
        problem = (f"the alert board was last published {_age(board.age(now))} ago, more than {STALE_AFTER_INTERVALS}x "
                   f"the sensor interval ({board.sensor_interval_seconds} s): the alert sensor does not appear to be "
                   "running, so this list may be out of date")
    else:
        problem = None
    alerts = board.alerts if board else ()
    if args.json:
        print(json.dumps({
            "published_at": board.published_at.isoformat() if board else None,
            "published_seconds_ago": round(board.age(now).total_seconds(), 1) if board else None,
            "sensor_interval_seconds": board.sensor_interval_seconds if board else None,
            "sensor_running": problem is None,
            "problem": problem, "what_to_do": _SENSOR_HINT if problem else None,
            "alerts": [{**a.to_dict(), "age_seconds": round(a.age(now).total_seconds(), 1)} for a in alerts],
        }, indent=2))
    elif board is not None:
        if alerts:
            width = max(6, *(len(a.target) for a in alerts))
            print(f"{'SEVERITY':<9} {'AGE':>8}  {'TARGET':<{width}}  TITLE")
            for a in alerts:
                print(f"{a.severity.upper():<9} {_age(a.age(now)):>8}  {a.target:<{width}}  {a.title}")
                if a.run_url:
                    print(f"{'':<9} {'':>8}  {'':<{width}}  {a.run_url}")
        else:
            print("no open alerts")
        print(f"(published by the alert sensor {_age(board.age(now))} ago, at "
              f"{board.published_at.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S} UTC)")
    if problem and not args.json:
        print(f"{'warning' if board else 'error'}: {problem}\n  what to do: {_SENSOR_HINT}", file=sys.stderr)
    return 1 if problem or alerts else 0


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
    r.add_argument("--anonymize", action="store_true",
                   help="mask the personal columns of the target's gdpr.mask in every row after restoring")
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

    al = sub.add_parser("alerts", help="list open alerts with their age, as the alert sensor last published them",
                        epilog="exit status: 0 no open alert; 1 an alert is open, or the alert sensor does not "
                               "appear to be running (no board, or one older than 3 sensor intervals)")
    al.add_argument("--json", action="store_true")
    al.set_defaults(func=cmd_alerts)

    cli_stats.add_parsers(sub)
    cli_gdpr.add_parsers(sub)
    cli_wal.add_parsers(sub)
    cli_basebackup.add_parsers(sub)
    cli_pitr.add_parsers(sub)

    st = sub.add_parser("store", help="maintain the store").add_subparsers(dest="sub", required=True)
    mg = st.add_parser("migrate", help="move backups from the pre-0.2 layout (<target>/<id>/) under backups/")
    mg.set_defaults(func=cmd_store_migrate)
    return p


def _error(message: str, hint: str | None = None) -> None:
    # On a terminal the progress line may still be open: start on a fresh one.
    lead = "\n" if sys.stderr.isatty() else ""
    print(f"{lead}error: {message}", file=sys.stderr)
    if hint:
        print(f"  what to do: {hint}", file=sys.stderr)


def _one_line(exc: BaseException) -> str:
    return " ".join(redact(str(exc)).split()) or type(exc).__name__


def _usage_problem(args) -> DbopsError | None:
    """Bad usage, found before anything is loaded or touched (exit 2)."""
    if args.command == "restore":
        if args.jobs < 1:
            return DbopsError("--jobs must be at least 1")
        try:
            info = parse_dsn(args.to, "--to", DbopsError)
        except DbopsError as exc:
            return exc
        if not (info.get("dbname") or info.get("service")):
            # libpq would pick a default database: never restore into one by accident.
            return DbopsError("--to names no database", "write postgresql://user@host:port/dbname or 'host=... dbname=...'")
    return None


def _stdout_gone() -> bool:
    """Did the reader of stdout go away (`dbops backups list | head -1`)? Then poll reports an
    error on our end of the pipe; a BrokenPipeError from anywhere else is a real failure."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _quiet_exit_for_closed_stdout() -> int:
    # What `head` expects of a producer: stop quietly. Python would otherwise report the failed
    # flush of what is still buffered when it exits; send that to /dev/null instead.
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except OSError:
        pass
    return 128 + signal.SIGPIPE  # 141, as for a Unix tool the broken pipe ended


def main(argv: list[str] | None = None) -> int:
    """Every way a command can end is one of the exit codes in the module docstring, with one
    clear line on stderr: never a traceback (DBOPS_DEBUG=1 adds one, redacted, for a bug)."""
    with sigterm_as_interrupt():  # SIGTERM unwinds like Ctrl-C: children stopped, temp files removed
        code = _main(argv)
        try:
            sys.stdout.flush()  # a closed stdout shows here, not in Python's exit-time flush
        except BrokenPipeError:
            return _quiet_exit_for_closed_stdout()
        return code


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "table", None) and args.command == "backup" and not args.kind:
        args.kind = "tables"
    problem = _usage_problem(args)
    if problem:
        _error(problem.message, problem.hint)
        return 2
    try:
        return args.func(args)
    except BrokenPipeError as exc:
        if _stdout_gone():
            return _quiet_exit_for_closed_stdout()
        _error(f"unexpected broken pipe: {_one_line(exc)}", "this is a bug in dbops: please report it with the command you ran")
        return 1
    except DbopsError as exc:
        _error(redact(exc.message), exc.hint)
        return 1
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        lead = "\n" if sys.stderr.isatty() else ""
        print(f"{lead}interrupted ({'SIGTERM' if signum == signal.SIGTERM else 'Ctrl-C'}): "
              "what was under way was stopped and nothing half-done was recorded", file=sys.stderr)
        return 128 + signum  # 130 for Ctrl-C, 143 for SIGTERM
    except psycopg.Error as exc:
        # The core turns expected database failures into DbopsErrors; this one slipped through.
        _error(f"database error: {_one_line(exc)}", "check the server and its log, then run the command again")
        return 1
    except Exception as exc:  # noqa: BLE001 - the boundary: one line instead of a traceback
        _error(f"unexpected {type(exc).__name__}: {_one_line(exc)}",
               "this is a bug in dbops: please report it with the command you ran (DBOPS_DEBUG=1 shows where it happened)")
        if os.environ.get("DBOPS_DEBUG"):
            print(redact(traceback.format_exc()), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
