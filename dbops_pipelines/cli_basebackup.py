"""`dbops basebackup ...`: physical base backups of a target's cluster (docs/pitr.md#base-backups).

    dbops basebackup take TARGET [--json]                     take one now; prints its id
    dbops basebackup list [TARGET | --cluster C] [--json]     newest first, with start/stop LSN
    dbops basebackup restore ID --into DIR [--no-verify] [--json]
    dbops basebackup verify DIR [--json]                      pg_verifybackup on a restored directory
    dbops basebackup verify-restore TARGET [--backup ID] [--no-drill] [--json]
                                                              restore, recover, pg_amcheck, PITR drill

Exit codes as for every command (cli.py): 0 done; 1 failed (the message says what to do), or
for `restore` and `verify`, pg_verifybackup found a problem; 2 bad usage. `restore` writes only
into DIR, which must be new or empty, and leaves nothing there when it fails; it runs
pg_verifybackup on the result unless --no-verify. It does not start a server: PITR does that.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from dbops_pipelines.config import load_config
from dbops_pipelines.context import FleetContext
from dbops_pipelines.redact import redact
from dbops_pipelines.wal.basebackup import (find_base_backup, list_base_backups, restore_base_backup, take_base_backup,
                                            verify_base_backup_files)


def add_parsers(sub) -> None:
    b = sub.add_parser("basebackup", help="physical base backups of a target's cluster (docs/pitr.md)",
                       description=__doc__.split("\n\n")[1] if __doc__ else None)
    bs = b.add_subparsers(dest="sub", required=True)
    t = bs.add_parser("take", help="take a base backup of TARGET's cluster now (its role needs REPLICATION); prints the id")
    t.add_argument("target")
    t.add_argument("--json", action="store_true", help="print the whole manifest as JSON instead of the id")
    t.set_defaults(func=cmd_take)

    ls = bs.add_parser("list", help="list base backups, newest first (default: of every cluster in the config)")
    which = ls.add_mutually_exclusive_group()
    which.add_argument("target", nargs="?", help="the cluster of this target")
    which.add_argument("--cluster", help="a cluster by name (a key of clusters, or host:port)")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)

    r = bs.add_parser("restore", help="restore a base backup into a new (or empty) directory; starts nothing")
    r.add_argument("backup_id")
    r.add_argument("--into", required=True, metavar="DIR", help="the new data directory (created mode 0700; must not hold files)")
    r.add_argument("--no-verify", action="store_true", help="skip pg_verifybackup on the restored directory")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_restore)

    v = bs.add_parser("verify", help="run pg_verifybackup on a restored base backup (before a server starts on it)")
    v.add_argument("data_dir", metavar="DIR")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_verify)

    vr = bs.add_parser("verify-restore", help="verify a base backup of TARGET's cluster: restore it into a scratch "
                       "directory, recover to its consistent point, pg_verifybackup, pg_amcheck, row counts, and a PITR "
                       "drill; the sealed report is kept in the store (exit 0 = verified)")
    vr.add_argument("target")
    vr.add_argument("--backup", metavar="ID", help="this base backup (default: the newest)")
    vr.add_argument("--no-drill", action="store_true", help="skip the PITR drill (it writes two marker rows with the "
                    "target's cleanup role)")
    vr.add_argument("--timeout", type=float, default=3600, help="seconds to wait for each recovery (default 3600)")
    vr.add_argument("--json", action="store_true", help="print the whole report as JSON")
    vr.set_defaults(func=cmd_verify_restore)


def _printer(verb: str):
    from dbops_pipelines.cli import ProgressPrinter  # cli imports this module: only at call time

    return ProgressPrinter(verb)


def _human(n: float) -> str:
    from dbops_pipelines.cli import human_bytes

    return human_bytes(n)


def _warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr)


def cmd_take(args) -> int:
    ctx = FleetContext(load_config(args.config))
    printer = _printer(f"base backup {args.target}")
    t0 = time.monotonic()
    m = take_base_backup(ctx, args.target, progress=printer, progress_interval=printer.interval, on_warning=_warn)
    printer.done()
    seconds = time.monotonic() - t0
    print(f"base backup {m.backup_id} of cluster {m.cluster} complete: {_human(m.raw_bytes)} read, {_human(m.stored_bytes)} "
          f"stored at {m.location} in {seconds:.1f} s ({_human(m.raw_bytes / seconds if seconds else 0)}/s); "
          f"timeline {m.timeline}, LSN {m.start_lsn} to {m.stop_lsn}", file=sys.stderr)
    print(json.dumps(asdict(m), indent=2) if args.json else m.backup_id)
    return 0


def cmd_list(args) -> int:
    ctx = FleetContext(load_config(args.config))
    cfg = ctx.config
    if args.cluster:
        clusters = [args.cluster]
    elif args.target:
        clusters = [cfg.server_of(args.target)]
    else:
        clusters = sorted({cfg.server_of(t) for t in cfg.targets})
    entries = [e for c in clusters for e in list_base_backups(ctx, c)]
    entries.sort(key=lambda e: (e.started_at, e.backup_id), reverse=True)
    if args.json:
        print(json.dumps([e.to_dict() for e in entries], indent=2))
    elif not entries:
        print("no base backups")
    else:
        width = max(36, *(len(e.backup_id) for e in entries))
        print(f"{'ID':<{width}} {'STATUS':<12} {'STARTED (UTC)':<20} {'SIZE':>10}  {'TL':>3}  {'START LSN':<14} {'STOP LSN':<14} TARGET")
        for e in entries:
            m = e.manifest
            size = m.stored_bytes if m else e.size_bytes
            print(f"{e.backup_id:<{width}} {e.state:<12} {e.started_at:%Y-%m-%d %H:%M:%S}  {_human(size):>10}  "
                  f"{m.timeline if m else '-':>3}  {m.start_lsn if m else '-':<14} {m.stop_lsn if m else '-':<14} "
                  f"{m.target if m else '-'}")
    for e in entries:
        if e.problem:
            print(f"warning: {e.backup_id}: {redact(e.problem)}" + (f"\n  what to do: {e.error.hint}" if e.error.hint else ""),
                  file=sys.stderr)
    return 0


def cmd_restore(args) -> int:
    ctx = FleetContext(load_config(args.config))
    entry = find_base_backup(ctx, None, args.backup_id)
    printer = _printer(f"restore {args.backup_id}")
    restored = restore_base_backup(ctx, entry.manifest, Path(args.into), progress=printer, progress_interval=printer.interval)
    printer.done()
    print(f"restored base backup {restored.backup_id} into {restored.data_dir}: {restored.files} files, "
          f"{_human(restored.raw_bytes)} in {restored.seconds:.1f} s, owned by {restored.owner}; "
          f"consistent once WAL up to {restored.manifest.stop_lsn} (timeline {restored.manifest.timeline}) is replayed "
          "(it is included in pg_wal)", file=sys.stderr)
    check = None if args.no_verify else verify_base_backup_files(restored.data_dir, ctx.config.defaults.pg_bin_dir)
    if args.json:
        print(json.dumps({**restored.to_dict(), "verification": check.to_dict() if check else None}, indent=2))
    else:
        print(restored.data_dir)
    if check is not None:
        return _report_check(check, restored.data_dir)
    return 0


def cmd_verify(args) -> int:
    cfg = load_config(args.config)
    check = verify_base_backup_files(Path(args.data_dir), cfg.defaults.pg_bin_dir)
    if args.json:
        print(json.dumps(check.to_dict(), indent=2))
    return _report_check(check, check.data_dir)


def _report_check(check, data_dir: Path) -> int:
    if check.ok:
        print(check.summary, file=sys.stderr)
        return 0
    print(f"error: {check.summary}\n  what to do: do not start a server on {data_dir}; remove it and restore the base "
          "backup again, or restore an older one (docs/pitr.md#base-backups)", file=sys.stderr)
    for line in check.messages:
        print(f"  {line}", file=sys.stderr)
    return 1


def cmd_verify_restore(args) -> int:
    from dbops_pipelines.config import config_path
    from dbops_pipelines.wal.base_report import base_report_key
    from dbops_pipelines.wal.verify_base import verify_base_backup

    path = Path(args.config) if args.config else config_path()
    ctx = FleetContext(load_config(path))
    report = verify_base_backup(ctx, args.target, args.backup, drill=not args.no_drill, config_path=path,
                                timeout=args.timeout, log=lambda line: print(line, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    print(f"{'' if report.passed else 'error: '}{redact(report.summary())}\n  report: "
          f"{ctx.storage_location(base_report_key(report))}", file=sys.stderr)
    for note in report.notes:
        print(f"  note: {note}", file=sys.stderr)
    return 0 if report.passed else 1
