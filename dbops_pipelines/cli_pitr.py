"""`dbops pitr ...`: point-in-time recovery into a new data directory (docs/pitr.md).

    dbops pitr TARGET --into DIR --port P (--to TIME | --to-xid X | --to-lsn L | --to-name NAME | --latest)
               [--action promote|pause] [--timeout SECONDS] [--json]

Exit 0 when the recovered server reached the target (it is left running on 127.0.0.1:P; the
output says how to stop it), 1 when anything failed (before restoring: nothing was written).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dbops_pipelines.config import config_path, load_config
from dbops_pipelines.context import FleetContext
from dbops_pipelines.wal.pitr import ACTIONS, parse_target, pitr


def add_parsers(sub) -> None:
    p = sub.add_parser("pitr", help="recover the target's cluster to a point in time, into a new data directory")
    p.add_argument("target", help="a target on the cluster to recover")
    p.add_argument("--into", required=True, metavar="DIR", help="a new (or empty) data directory")
    p.add_argument("--port", required=True, type=int, help="a free port for the recovered server (127.0.0.1 only)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--to", metavar="TIME", help="ISO 8601; UTC when no zone is given")
    g.add_argument("--to-xid", metavar="XID")
    g.add_argument("--to-lsn", metavar="LSN")
    g.add_argument("--to-name", metavar="NAME", help="a restore point made with pg_create_restore_point()")
    g.add_argument("--latest", action="store_true", help="everything archived")
    p.add_argument("--action", choices=ACTIONS, default="promote",
                   help="at the target: promote (open for writes; default) or pause (read-only, to inspect)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait for recovery (default 3600)")
    p.add_argument("--base-backup", metavar="ID", help="start from this base backup (default: the newest before the "
                   "target; name an older one for a restore point or transaction id before the newest)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_pitr)


def cmd_pitr(args) -> int:
    path = Path(args.config) if args.config else config_path()
    target = parse_target(args.to, args.to_xid, args.to_lsn, args.to_name, args.latest, args.action)
    ctx = FleetContext(load_config(path))
    result = pitr(ctx, args.target, Path(args.into), args.port, target, path,
                  log=lambda line: print(line, file=sys.stderr, flush=True), timeout=args.timeout,
                  backup_id=args.base_backup)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(f"recovered {result.cluster} to {result.target} from base backup {result.base_backup}: {result.state} at "
          f"LSN {result.reached_lsn}, last transaction {result.last_transaction_at or 'unknown'}, timeline "
          f"{result.timeline}; RTO {result.rto_seconds:.1f} s (restore {result.restore_seconds:.1f} s)")
    print(f"  the copy runs on 127.0.0.1:{result.port} from {result.data_dir}; stop it with: {result.stop_command}")
    return 0
