"""Taking a base backup: pg_basebackup's tar streamed through zstd and encryption into the
store under the writer's lease, then the manifest, sealed, create-only (see the package docstring)."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone

import psycopg
import zstandard

from dbops_pipelines.backup.crypto import BackupKey, encrypt_stream
from dbops_pipelines.backup.engine import ENCRYPTION, READ_SIZE
from dbops_pipelines.backup.lease import WriterLease
from dbops_pipelines.config import WalSettings, host_port
from dbops_pipelines.errors import BackupFailed, DbopsError
from dbops_pipelines.pgtools import PgProcess, connect, enlarge_pipe, password_to_env, pick_client
from dbops_pipelines.progress import Progress
from dbops_pipelines.redact import redact
from dbops_pipelines.storage.base import BackupStore
from dbops_pipelines.wal.basebackup.manifest import (BaseBackupManifest, data_key, lease_key, manifest_key,
                                                     new_base_backup_id, seal_base_manifest)
from dbops_pipelines.wal.basebackup.preflight import Server, failure_hint, preflight
from dbops_pipelines.wal.basebackup.tarwatch import REPORT, TarWatch, label_time, stream_facts
from dbops_pipelines.wal.naming import format_lsn, parse_lsn


class _BaseBackupLease(WriterLease):
    """The backups' writer lease (renewed in place, checked before the manifest is written),
    kept in the base backup's own folder under wal/."""

    def __init__(self, store: BackupStore, key: str):
        super().__init__(store, "-", "-")
        self.key = key


def _confirm_stored(store: BackupStore, manifest: BaseBackupManifest) -> None:
    data = store.stat(manifest.object_key)
    if data is None or data.size != manifest.stored_bytes:
        found = "is missing" if data is None else f"has {data.size} bytes instead of {manifest.stored_bytes}"
        raise BackupFailed(f"base backup {manifest.backup_id}: after the upload, the data object {found}; nothing was kept",
                           "something else deletes or rewrites objects in the store (another tool, a lifecycle rule): "
                           "find it, then run the base backup again")
    if store.stat(manifest_key(manifest.cluster, manifest.backup_id)) is None:
        raise BackupFailed(f"base backup {manifest.backup_id}: the manifest is missing right after it was written",
                           "check the store's consistency and run the base backup again")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat()


def _manifest(ctx, target: str, cluster: str, dsn: str, backup_id: str, started: datetime, server: Server,
              client: tuple[int, int], level: int, key: BackupKey, watch: TarWatch, raw_bytes: int, stored,
              warnings: list[str]) -> BaseBackupManifest:
    facts = stream_facts(watch)
    if facts.system_identifier != server.system_identifier:
        raise BackupFailed(
            f"pg_basebackup copied the cluster with system identifier {facts.system_identifier}, but the SQL "
            f"connection to {target} reached {server.system_identifier}: the same DSN leads to different servers "
            "(a pooler or proxy in front?); nothing was kept",
            "point the target's dsn straight at the server (not through a pooler) and run again")
    label, ranges = facts.label, facts.wal_ranges
    start_time = label_time(label.get("START TIME"))
    stop_seen = watch.first_wal_at or time.time()
    try:
        timeline, start_lsn = int(label["START TIMELINE"]), parse_lsn(label["START WAL LOCATION"].split()[0])
    except (ValueError, IndexError) as exc:
        raise BackupFailed(f"the backup_label of the backup of {target} cannot be read ({exc}); nothing was kept", REPORT) from None
    return BaseBackupManifest(
        backup_id=backup_id, cluster=cluster, target=target, server=host_port(dsn),
        server_version=server.version, pg_basebackup_version=f"{client[0]}.{client[1]}",
        system_identifier=str(facts.system_identifier), timeline=timeline, start_lsn=format_lsn(start_lsn),
        checkpoint_lsn=label.get("CHECKPOINT LOCATION", ""),
        stop_lsn=format_lsn(parse_lsn(ranges[-1]["End-LSN"])), stop_timeline=int(ranges[-1]["Timeline"]),
        start_time=(start_time or datetime.fromtimestamp(stop_seen + server.clock_offset, timezone.utc)).isoformat(),
        stop_time=_iso(stop_seen + server.clock_offset),
        started_at=started.isoformat(), finished_at=datetime.now(timezone.utc).isoformat(),
        raw_bytes=raw_bytes, stored_bytes=stored.size, sha256=stored.sha256,
        object_key=data_key(cluster, backup_id), location=stored.location, compression=f"zstd-{level}",
        encryption=ENCRYPTION, key_id=key.key_id, backup_manifest_sha256=watch.manifest_sha.hexdigest(),
        backup_manifest_bytes=watch.manifest_bytes, backup_label=watch.backup_label.decode("utf-8", "replace"),
        wal_ranges=ranges, files=watch.files, from_standby=label.get("BACKUP FROM") == "standby",
        start_time_source="backup_label" if start_time else "observed", pg_basebackup_warnings=warnings,
    )


def take_base_backup(ctx, target: str, progress: Callable[[Progress], None] | None = None,
                     progress_interval: float = 5.0, on_warning: Callable[[str], None] | None = None) -> BaseBackupManifest:
    """A base backup of ``target``'s cluster, through its DSN (its backup role, which needs
    REPLICATION). Returns the manifest once the data object and the manifest are stored."""
    cfg = ctx.config
    settings = cfg.target(target)
    wal = settings.wal or WalSettings()
    cluster = cfg.server_of(target)
    dsn = cfg.dsn_for(target, "backup")   # the backup role: it needs REPLICATION
    key = ctx.write_key                       # a missing key fails before anything is started
    started = datetime.now(timezone.utc)
    backup_id = new_base_backup_id(cluster, started, secrets.token_hex(2))
    with connect(dsn, target, retries=cfg.defaults.connect_retries) as conn:
        try:
            server = preflight(conn, target)
        except psycopg.Error as exc:
            raise BackupFailed(f"base backup of {target}: {redact(str(exc)).strip()}", "check the database log and run again") from None
    pg_basebackup, client = pick_client("pg_basebackup", {f"the server of {target} (PostgreSQL {server.major})": server.major},
                                        cfg.defaults.pg_bin_dir, BackupFailed)
    level = wal.compression_level
    bb_dsn, env = password_to_env(dsn)
    env.setdefault("PGAPPNAME", "dbops basebackup")
    warnings: list[str] = []

    def warn(line: str) -> None:
        warnings.append(line)
        if on_warning:
            on_warning(line)

    watch = TarWatch()
    raw_total = [0]
    obj_key = data_key(cluster, backup_id)
    proc = PgProcess([str(pg_basebackup), "-D", "-", "-Ft", "-X", "fetch", "--checkpoint=fast", "--no-password",
                      f"--label=dbops {backup_id}", "-d", bb_dsn], env=env, stdout=True, on_line=warn)
    try:
        enlarge_pipe(proc.stdout.fileno())

        def tar_stream() -> Iterator[bytes]:
            # The engine's shape: this thread drains the pipe as soon as pg_basebackup writes and
            # zstd compresses in a worker thread of its own (threads=1), so the server's WAL
            # sender never waits on us while zstd's job buffer has room.
            compressor = zstandard.ZstdCompressor(level=level, threads=1).compressobj()
            t0 = last = time.monotonic()
            stored = 0
            fd = proc.stdout.fileno()
            while data := os.read(fd, READ_SIZE):
                raw_total[0] += len(data)
                watch.feed(data)
                out = compressor.compress(data)
                if out:
                    stored += len(out)
                    yield out
                if progress and time.monotonic() - last >= progress_interval:
                    last = time.monotonic()
                    progress(Progress(raw_total[0], stored, last - t0))
            rc = proc.wait()
            if rc != 0:
                text = proc.messages.text()
                how = f"was killed by signal {-rc}" if rc < 0 else f"exited with code {rc}"
                raise BackupFailed(f"pg_basebackup of {target} {how}; nothing was stored. Its last messages:\n{text or '(none)'}",
                                   failure_hint(text))
            if watch.tablespace_links:
                raise BackupFailed(f"the backup of {target} holds tablespace links ({', '.join(watch.tablespace_links)}); "
                                   "nothing was kept", "see docs/pitr.md#base-backups (tablespaces)")
            stream_facts(watch)   # complete before the stream may end cleanly: else the upload is aborted
            tail = compressor.flush()
            stored += len(tail)
            yield tail
            if progress:
                progress(Progress(raw_total[0], stored, time.monotonic() - t0))

        with _BaseBackupLease(ctx.store, lease_key(cluster, backup_id)) as lease:
            stored = ctx.store.put(obj_key, encrypt_stream(tar_stream(), key), size_hint=(server.size_hint or 0) // 3 or None)
            committed = False
            try:
                manifest = _manifest(ctx, target, cluster, dsn, backup_id, started, server, client, level, key, watch,
                                     raw_total[0], stored, warnings)
                lease.check_held()
                ctx.store.put_bytes(manifest_key(cluster, backup_id), seal_base_manifest(manifest, key))
                _confirm_stored(ctx.store, manifest)
                committed = True
            finally:
                if not committed:
                    # A data object without a manifest is never valid, and a manifest without its
                    # data must not outlive this failure: remove both (ours, just written).
                    for k in (manifest_key(cluster, backup_id), obj_key):
                        try:
                            ctx.store.delete(k)
                        except DbopsError:
                            pass
        return manifest
    finally:
        proc.close()   # pg_basebackup gone (SIGTERM, then SIGKILL) before anything else is released
