"""Point-in-time recovery into a new data directory: pick the newest base backup before the target,
restore it, configure recovery (restore_command = dbops wal-fetch, the recovery target), start a
server on a port of its own, wait until recovery reaches the target, and report the exact point
reached (LSN, last transaction time, timeline) and the RTO.

It never touches the running cluster: the directory must be new or empty, the port free, the
copy listens on 127.0.0.1 and a private socket only, never connects to a primary, and has
archive_mode off (a promoted copy must never push WAL into the production archive). Everything
that can be checked before restoring is: a target before the oldest base backup, after the end
of the archive, or with a gap in the WAL between the base backup and the archive's end, is an
error before any byte is written.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from dbops_pipelines.context import FleetContext
from dbops_pipelines.errors import ConfigError
from dbops_pipelines.pgtools import find_binary
from dbops_pipelines.wal.basebackup import list_base_backups, restore_base_backup
from dbops_pipelines.wal.naming import parse_lsn
from dbops_pipelines.wal.pitr.plan import (ArchivedSegment, archive_info, archived_segments, check_archive_reaches,
                                           choose_base_backup, port_free)
from dbops_pipelines.wal.pitr.server import (as_owner, log_tail, private_socket, recovery_settings, superuser_guess,
                                             wait_for_target, write_recovery)
from dbops_pipelines.wal.pitr.target import ACTIONS, PitrFailed, PitrResult, RecoveryTarget, parse_target

__all__ = ["ACTIONS", "ArchivedSegment", "PitrFailed", "PitrResult", "RecoveryTarget", "archive_info", "archived_segments",
           "as_owner", "check_archive_reaches", "choose_base_backup", "log_tail", "parse_target", "pitr", "private_socket",
           "recovery_settings", "write_recovery"]


def pitr(ctx: FleetContext, target_name: str, into: Path, port: int, target: RecoveryTarget, config_path: Path,
         log: Callable[[str], None] = lambda line: None, timeout: float = 3600.0,
         backup_id: str | None = None) -> PitrResult:
    cfg = ctx.config
    cluster = cfg.server_of(target_name)
    into = Path(os.path.abspath(into))
    if not port_free(port):
        raise ConfigError(f"port {port} is in use on 127.0.0.1", "choose a free port for the recovered copy")
    if into.exists() and (not into.is_dir() or any(into.iterdir())):
        raise ConfigError(f"{into} exists and is not an empty directory", "recover into a new directory; nothing was changed")
    t0 = time.monotonic()
    info = archive_info(ctx, cluster)
    size = int(info["wal_segment_size"])
    # Only base backups of the cluster that owns the archive: after a re-initdb under the same
    # name, the old cluster's WAL cannot replay on the new one's backups (or the other way round).
    entries = [e.manifest for e in list_base_backups(ctx, cluster)
               if e.valid and e.manifest and str(e.manifest.system_identifier) == str(info.get("system_identifier"))]
    base = choose_base_backup(entries, target, backup_id)
    newest = check_archive_reaches(base, archived_segments(ctx, cluster, size), target, size)
    log(f"restoring base backup {base.backup_id} (consistent from {base.stop_time}) into {into}")
    restored = restore_base_backup(ctx, base, into)
    if not (into / "postgresql.conf").exists():
        raise PitrFailed(f"the base backup has no postgresql.conf (the server keeps its configuration outside the data "
                         f"directory, as Debian's /etc/postgresql does); {into} holds the restored files, not started",
                         f"copy the server's postgresql.conf and pg_hba.conf into {into}, then run `dbops pitr` again "
                         "into a new directory, or start it by hand with the recovery settings of docs/pitr.md")
    socket_dir = private_socket(into)
    write_recovery(into, recovery_settings(cluster, config_path.resolve(), port, target, socket_dir))
    log_file = into / "dbops_pitr.log"
    log_file.touch()
    if os.geteuid() == 0:
        os.chown(log_file, into.stat().st_uid, into.stat().st_gid)
    pg_ctl = str(find_binary("pg_ctl", int(base.server_version.split(".")[0]), cfg.defaults.pg_bin_dir, error=PitrFailed))
    started = subprocess.run(as_owner(into, [pg_ctl, "start", "-D", str(into), "-l", str(log_file), "-W"]),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             cwd=str(into))
    if started.returncode != 0:
        raise PitrFailed(f"the recovered server did not start: {started.stdout.strip()}\n{log_tail(log_file)}",
                         f"fix the cause and start it with pg_ctl start -D {into}, or remove {into} and try again")
    log(f"server started on 127.0.0.1:{port}; recovering to {target.describe()}")

    seen = [False]
    launched = time.monotonic()

    def alive() -> bool:
        # pg_ctl -W returns before the postmaster writes its pid file: not running yet is only
        # "stopped" once it was seen running, or after a generous start-up allowance.
        running = subprocess.run(as_owner(into, [pg_ctl, "status", "-D", str(into)]), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL).returncode == 0
        seen[0] = seen[0] or running
        return running or (not seen[0] and time.monotonic() - launched < 30)

    state, lsn, at, tli = wait_for_target(port, target, log_file, alive, timeout, log, socket_dir, superuser_guess(into))
    if target.kind == "latest" and parse_lsn(lsn) < newest.number * size:
        # Recovery ended before the archive's newest segment: something after it could not be
        # read. The copy is open, but it is not "the end of the archive".
        raise PitrFailed(f"recovery stopped at {lsn}, before the archive's newest segment {newest.name(size)}: WAL after "
                         f"that point could not be replayed. The copy on 127.0.0.1:{port} is open but incomplete. Its log:\n"
                         f"{log_tail(log_file)}", "run `dbops wal verify TARGET` to find the damaged or missing segment")
    return PitrResult(cluster=cluster, target=target.describe(), base_backup=base.backup_id, data_dir=str(into),
                      port=port, reached_lsn=lsn, last_transaction_at=at, timeline=tli, state=state,
                      rto_seconds=round(time.monotonic() - t0, 3), restore_seconds=round(restored.seconds, 3),
                      stop_command=" ".join(as_owner(into, [pg_ctl, "stop", "-D", str(into)])))
