"""`dbops wal-push`, `dbops wal-fetch`, `dbops wal verify`: continuous WAL archiving (docs/pitr.md).

    archive_command = 'dbops wal-push %p --target app'
    restore_command = 'dbops wal-fetch %f %p --target app'
    dbops wal verify app [--json] [--quick] [--since SEGMENT]

`--target T` archives T's cluster (FleetConfig.server_of); `--cluster C` names the cluster
itself; with neither, the config's only target that has a `wal` section.

Exit codes (PostgreSQL reads them; anything from 1 to 125 makes it retry a push later, and makes
it treat a fetch as "not available"):
    0  wal-push: stored (or already stored with identical content); wal-fetch: written
    1  wal-fetch: the archive has no such file (normal during recovery: nothing is printed);
       wal verify: the archive has gaps, damaged objects or other problems
    2  bad usage
    3  damage or conflict: a stored object fails authentication or its checks, or wal-push found
       the same name archived with different content (never overwritten)
    4  wal-push: the archive belongs to another cluster (system identifier or segment size)
    5  could not complete: store unreachable, key or config missing, local read or write failed
  126  wal-fetch --strict: any failure but "not in the archive" (instead of 3, 4 or 5). PostgreSQL
       reads 1-125 from restore_command as "not available", which ends recovery there (a recovery
       to the latest point would open early, silently); above 125 it stops recovery (FATAL).
       `dbops pitr` runs wal-fetch with --strict.

Both commands are started by PostgreSQL once per file, so their cheap cases avoid loading the
config: a cache in $TMPDIR/dbops-wal-resolve-<uid>/ maps (config file as it is now, working
directory, --target/--cluster) to the spool, and a push of a file an earlier call already stored
in parallel, or a fetch of a segment prefetched earlier, is answered from the spool alone.
`python -m dbops_pipelines.cli_wal ...` takes the same arguments and starts faster than `dbops`
(it imports only what these commands need).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import tempfile
from pathlib import Path

from dbops_pipelines.errors import DbopsError, IntegrityError

EXIT_OK = 0
EXIT_MISSING = 1
EXIT_PROBLEMS = 1
EXIT_USAGE = 2
EXIT_DAMAGED = 3
EXIT_FOREIGN = 4
EXIT_FAILED = 5
EXIT_STRICT = 126       # wal-fetch --strict: PostgreSQL aborts recovery on a code above 125


def add_parsers(sub) -> None:
    p = sub.add_parser("wal-push", help="archive_command: store one WAL file (and other .ready ones) in the encrypted store",
                       description="Run by PostgreSQL as archive_command = 'dbops wal-push %p --target T'. "
                                   "Exit 0 only when the file is stored. See docs/pitr.md.")
    p.add_argument("path", help="%%p: the file, relative to the data directory (the working directory)")
    _selector(p)
    p.add_argument("--verbose", "-v", action="store_true", help="print what was stored on stderr")
    p.set_defaults(func=cmd_wal_push)

    f = sub.add_parser("wal-fetch", help="restore_command: write one archived WAL file (exit 1 if there is none)",
                       description="Run by PostgreSQL as restore_command = 'dbops wal-fetch %f %p --target T'. "
                                   "Exit 0 written, 1 not in the archive (silently), 3 damaged, 5 failed "
                                   "(126 with --strict). See docs/pitr.md.")
    f.add_argument("name", help="%%f: the WAL file's name")
    f.add_argument("path", help="%%p: where to write it")
    _selector(f)
    f.add_argument("--verbose", "-v", action="store_true", help="say where the file came from on stderr")
    f.add_argument("--strict", action="store_true",
                   help=f"exit {EXIT_STRICT} on any failure but 'not in the archive' (damage, store unreachable, key or "
                        "config missing or unreadable), so that PostgreSQL stops recovery instead of ending it there")
    f.set_defaults(func=cmd_wal_fetch)

    w = sub.add_parser("wal", help="inspect the WAL archive").add_subparsers(dest="sub", required=True)
    v = w.add_parser("verify", help="report gaps, timeline switches and objects failing authentication",
                     epilog="exit status: 0 the archive is complete and every object read authenticated; 1 it is not")
    v.add_argument("target", nargs="?", help="the target whose cluster's archive to check")
    v.add_argument("--cluster", help="the cluster's name instead of a target")
    v.add_argument("--since", metavar="SEGMENT", help="look for gaps from this segment on (e.g. the oldest kept base backup's start)")
    v.add_argument("--quick", action="store_true", help="list only: do not read and authenticate every object")
    v.add_argument("--json", action="store_true", help="the full report as JSON")
    v.set_defaults(func=cmd_wal_verify)
    r = w.add_parser("retention", help="delete base backups and the WAL they no longer need, by the retention policy",
                     description="Base backups by targets.<name>.wal.retention over defaults.backup.retention (or the "
                                 "newest N with --keep-last); WAL kept from the oldest kept base backup's start on. "
                                 "See docs/pitr.md#retention.",
                     epilog="exit status: 0 done (or dry run); 1 stopped, nothing deleted (a base backup or archive.info "
                            "cannot be trusted); 5 a delete failed midway (what was done is printed)")
    r.add_argument("target", nargs="?", help="the target whose cluster's base backups and archive to prune")
    r.add_argument("--cluster", help="the cluster's name instead of a target")
    r.add_argument("--dry-run", action="store_true", help="show what would be deleted and what is kept and why; delete nothing")
    r.add_argument("--keep-last", type=int, metavar="N", help="keep the newest N valid base backups instead of the GFS slots")
    r.add_argument("--json", action="store_true", help="the plan and what was done as JSON")
    r.set_defaults(func=cmd_wal_retention)


def _selector(p) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--target", help="the target whose cluster is archived (its wal settings apply)")
    g.add_argument("--cluster", help="the cluster's name (the wal settings of a target on it apply)")


# --- errors ----------------------------------------------------------------------------------

def _error(message: str, hint: str | None = None) -> None:
    from dbops_pipelines.redact import redact

    print(f"error: {redact(message)}", file=sys.stderr)
    if hint:
        print(f"  what to do: {hint}", file=sys.stderr)


def _code_for(exc: BaseException) -> int:
    from dbops_pipelines.wal.archive import ForeignCluster

    if isinstance(exc, ForeignCluster):
        return EXIT_FOREIGN
    if isinstance(exc, IntegrityError):
        return EXIT_DAMAGED
    return EXIT_FAILED


def _guarded(run) -> int:
    """Every failure as one `error:` line with what to do and its exit code; never a traceback
    (DBOPS_DEBUG=1 adds one). Interrupts propagate: main() turns them into 130/143."""
    try:
        return run()
    except DbopsError as exc:
        _error(exc.message, exc.hint)
        return _code_for(exc)
    except Exception as exc:  # noqa: BLE001 - the boundary: PostgreSQL must see "failed", not "missing"
        _error(f"unexpected {type(exc).__name__}: {' '.join(str(exc).split())}",
               "this is a bug in dbops: please report it (DBOPS_DEBUG=1 shows where it happened)")
        if os.environ.get("DBOPS_DEBUG"):
            import traceback

            from dbops_pipelines.redact import redact

            print(redact(traceback.format_exc()), file=sys.stderr)
        return EXIT_FAILED


# --- which cluster, which settings -----------------------------------------------------------

def _config_path(args) -> Path:
    return Path(getattr(args, "config", None) or os.environ.get("DBOPS_CONFIG") or "dbops.yaml")


def _selector_text(args) -> str:
    if getattr(args, "target", None):
        return f"target:{args.target}"
    if getattr(args, "cluster", None):
        return f"cluster:{args.cluster}"
    return "auto"


def _resolve_cache_file(args) -> Path | None:
    try:
        path = _config_path(args)
        st = os.stat(path)
    except OSError:
        return None
    ident = "\0".join([os.path.abspath(path), str(st.st_dev), str(st.st_ino), str(st.st_size), str(st.st_mtime_ns),
                       os.getcwd(), _selector_text(args)])
    return Path(tempfile.gettempdir()) / f"dbops-wal-resolve-{os.geteuid()}" / hashlib.sha256(ident.encode()).hexdigest()[:32]


def _cached_spool(args) -> Path | None:
    """The spool a full call resolved for these arguments and this exact config file, if any."""
    f = _resolve_cache_file(args)
    if f is None:
        return None
    try:
        st = os.lstat(f.parent)
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            return None
        text = f.read_text().strip()
    except OSError:
        return None
    return Path(text) if text.startswith("/") else None


def _remember_spool(args, work: Path) -> None:
    f = _resolve_cache_file(args)
    if f is None:
        return
    try:
        from dbops_pipelines.wal.archive.spool import private_dir as _private_dir, write_atomic as _write_atomic

        _private_dir(f.parent)
        _write_atomic(f, f"{work}\n".encode())
    except (OSError, DbopsError):
        pass  # only a cache


def resolve(args):
    """(context, cluster, wal settings) for --target / --cluster / the only target with wal."""
    from dbops_pipelines.config import WalSettings, load_config
    from dbops_pipelines.context import FleetContext

    cfg = load_config(getattr(args, "config", None))
    if getattr(args, "target", None):
        target = cfg.target(args.target)   # ConfigError naming the known targets
        return FleetContext(cfg), cfg.server_of(args.target), target.wal or WalSettings()
    if getattr(args, "cluster", None):
        on_it = sorted(n for n in cfg.targets if cfg.server_of(n) == args.cluster)
        if not on_it and args.cluster not in cfg.clusters:
            raise DbopsError(f"no target of the config is on cluster {args.cluster!r}",
                             f"use the cluster name of a target ({', '.join(sorted({cfg.server_of(n) for n in cfg.targets})) or 'none'}), "
                             "or --target")
        with_wal = [n for n in on_it if cfg.target(n).wal]
        return FleetContext(cfg), args.cluster, (cfg.target(with_wal[0]).wal if with_wal else WalSettings())
    with_wal = sorted(n for n, t in cfg.targets.items() if t.wal)
    if len(with_wal) != 1:
        raise DbopsError(
            "no --target or --cluster given, and the config has " + (f"{len(with_wal)} targets with a wal section ({', '.join(with_wal)})"
                                                                      if with_wal else "no target with a wal section"),
            "add --target NAME (archive_command = 'dbops wal-push %p --target NAME')")
    name = with_wal[0]
    return FleetContext(cfg), cfg.server_of(name), cfg.target(name).wal


# --- commands --------------------------------------------------------------------------------

def cmd_wal_push(args) -> int:
    from dbops_pipelines.wal import archive

    def run() -> int:
        cached = _cached_spool(args)
        if cached is not None and archive.fast_push_done(cached, args.path):
            if args.verbose:
                print(f"{Path(args.path).name}: already pushed (spool {cached})", file=sys.stderr)
            return EXIT_OK
        ctx, cluster, settings = resolve(args)
        warn = (lambda line: print(line, file=sys.stderr))
        result = archive.push(ctx, cluster, args.path, settings, log=warn)
        _remember_spool(args, archive.Spool.locate(ctx.store, cluster, settings).work)
        if args.verbose:
            print(result.summary(), file=sys.stderr)
        return EXIT_OK

    return _guarded(run)


def cmd_wal_fetch(args) -> int:
    from dbops_pipelines.wal import archive

    def run() -> int:
        cached = _cached_spool(args)
        if cached is not None and archive.fast_fetch_done(cached, args.name, args.path):
            if args.verbose:
                print(f"{args.name}: from the prefetch spool {cached}", file=sys.stderr)
            return EXIT_OK
        ctx, cluster, settings = resolve(args)
        note = (lambda line: print(line, file=sys.stderr)) if args.verbose else (lambda line: None)
        found = archive.fetch(ctx, cluster, args.name, args.path, settings, log=note)
        _remember_spool(args, archive.Spool.locate(ctx.store, cluster, settings).work)
        if args.verbose:
            print(f"{args.name}: {'fetched from the store' if found else 'not in the archive'}", file=sys.stderr)
        return EXIT_OK if found else EXIT_MISSING

    code = _guarded(run)
    if getattr(args, "strict", False) and code not in (EXIT_OK, EXIT_MISSING):
        print(f"  --strict: exit {EXIT_STRICT} (not {code}) so that PostgreSQL stops recovery instead of treating "
              f"{args.name} as not available", file=sys.stderr)
        return EXIT_STRICT
    return code


def cmd_wal_verify(args) -> int:
    """Errors before a report exists (config, store) propagate: the CLI prints them (exit 1)."""
    from dbops_pipelines.wal.archive import verify_archive
    from dbops_pipelines.wal.naming import SEGMENT

    if args.target and args.cluster:
        _error("give a target or --cluster, not both")
        return EXIT_USAGE
    if args.since and not SEGMENT.fullmatch(args.since):
        _error(f"--since {args.since!r} is not a WAL segment name", "write e.g. 000000010000000000000003")
        return EXIT_USAGE
    ctx, cluster, _settings = resolve(args)
    report = verify_archive(ctx, cluster, since_segment=args.since, quick=args.quick)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return EXIT_OK if report.ok else EXIT_PROBLEMS
    mib = report.stored_bytes / (1 << 20)
    print(f"archive {report.location}: {report.objects} objects ({mib:.1f} MiB), segments of "
          f"{report.segment_size >> 20} MiB, system identifier {report.system_identifier or 'unknown'}")
    for t in report.timelines:
        tail = f"; {t.ignored_after_switch} after the switch away from it ignored" if t.ignored_after_switch else ""
        print(f"  timeline {t.timeline}: {t.first} .. {t.last} ({t.segments} segments){tail}")
    for s in report.switches:
        print(f"  switch: timeline {s.parent} -> {s.timeline} at {s.lsn} (after {s.segment}){': ' + s.reason if s.reason else ''}")
    for g in report.gaps:
        span = g.first if g.count == 1 else f"{g.first} .. {g.last}"
        print(f"  GAP timeline {g.timeline}: {span} ({g.count} missing)")
    for d in report.damaged:
        print(f"  DAMAGED {d.name}: {d.error}")
    for p in report.problems:
        print(f"  PROBLEM {p}")
    checked = "listed only (--quick)" if report.quick else "every object authenticated"
    if report.ok:
        print(f"ok: no gaps{'' if report.quick else ', no damaged objects'} ({checked}, {report.seconds:.1f} s)")
        return EXIT_OK
    print(f"NOT OK: {report.missing_segments} missing segment(s), {len(report.damaged)} damaged object(s), "
          f"{len(report.problems)} other problem(s) ({checked})", file=sys.stderr)
    todo = []
    if report.gaps:
        todo.append("recovery cannot pass a gap: take a new base backup (it needs only the WAL after it), and find out "
                    "why the segments are missing (pg_stat_archiver, the server log, who can delete from the store)")
    if report.damaged:
        todo.append("a damaged segment is a gap as well: keep the object for investigation and take a new base backup")
    if report.problems:
        todo.append("see each PROBLEM line above")
    print(f"  what to do: {'; '.join(todo)} (docs/pitr.md, WAL archiving)", file=sys.stderr)
    return EXIT_PROBLEMS


def cmd_wal_retention(args) -> int:
    """Errors before a plan exists (config, store) propagate: the CLI prints them, nothing was deleted."""
    from dbops_pipelines.redact import redact
    from dbops_pipelines.wal.retention import apply_wal_retention, wal_retention_policy

    if args.target and args.cluster:
        _error("give a target or --cluster, not both")
        return EXIT_USAGE
    if args.keep_last is not None and args.keep_last < 1:
        _error(f"--keep-last {args.keep_last}: keep at least 1 base backup")
        return EXIT_USAGE
    ctx, cluster, _settings = resolve(args)
    policy = wal_retention_policy(ctx.config, cluster, keep_last=args.keep_last)
    outcome = apply_wal_retention(ctx, cluster, dry_run=args.dry_run, policy=policy)
    done = (f"deleted {len(outcome.deleted_backups)} base backup(s) and {len(outcome.deleted_wal)} WAL object(s) "
            f"({outcome.deleted_wal_bytes / (1 << 20):.1f} MiB"
            + (f": {outcome.deleted_wal[0]} .. {outcome.deleted_wal[-1]})" if outcome.deleted_wal else ")"))
    if args.json:
        print(json.dumps(outcome.to_dict(), indent=2))
    else:
        print(redact(outcome.plan.summary()))
        if args.dry_run:
            print("dry run: nothing deleted")
        elif not outcome.blocked:
            print(done)
    if outcome.blocked:
        _error(f"retention of cluster {cluster} stopped, nothing deleted: {'; '.join(outcome.blocked)}",
               "find out why (`dbops basebackup list`, `dbops wal verify`), fix or remove the damaged base backup by "
               "hand, then run retention again")
        return EXIT_PROBLEMS
    if outcome.failed:
        _error(f"{outcome.failed} (before it: {done})", "fix the store's problem and run `dbops wal retention` again: "
               "it picks up where this run stopped")
        return EXIT_FAILED
    return EXIT_OK


# --- `python -m dbops_pipelines.cli_wal` -----------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    from dbops_pipelines.interrupts import sigterm_as_interrupt

    parser = argparse.ArgumentParser(prog="python -m dbops_pipelines.cli_wal",
                                     description="wal-push, wal-fetch and wal verify without the rest of dbops")
    parser.add_argument("--config", help="fleet config (default: $DBOPS_CONFIG or ./dbops.yaml)")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    with sigterm_as_interrupt():
        try:
            return args.func(args)
        except KeyboardInterrupt as exc:
            signum = getattr(exc, "signum", signal.SIGINT)
            print(f"interrupted ({'SIGTERM' if signum == signal.SIGTERM else 'Ctrl-C'}): nothing half-done was kept",
                  file=sys.stderr)
            return 128 + signum
        except DbopsError as exc:
            _error(exc.message, exc.hint)
            return EXIT_PROBLEMS


if __name__ == "__main__":
    sys.exit(main())
