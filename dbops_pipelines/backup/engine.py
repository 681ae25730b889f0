"""Run one backup: pg_dump -> zstd -> AES-256-GCM -> store, then the manifest, last.

Nothing of the dump touches local disk and memory stays bounded (zstd's job buffers, ~45 MiB at
level 3, plus one upload part). Any failure leaves no object under the backup's key and no
manifest, so nothing half-done is ever listed as a valid backup.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

import psycopg
import zstandard

from dbops_pipelines.backup.crypto import BackupKey, encrypt_stream
from dbops_pipelines.backup.lease import WriterLease
from dbops_pipelines.backup.manifest import BackupManifest, data_key, manifest_key, new_backup_id, seal_manifest
from dbops_pipelines.backup.snapshot import check_readable, count_rows, pg_dump_pattern, schema_fingerprint, table_checksums, tables_in_dump
from dbops_pipelines.progress import Progress
from dbops_pipelines.redact import redact
from dbops_pipelines.errors import BackupFailed, DbopsError
from dbops_pipelines.pgtools import PgProcess, binary_version, check_client_version, connect, enlarge_pipe, find_binary, password_to_env
from dbops_pipelines.storage.base import BackupStore

READ_SIZE = 1 << 20
ENCRYPTION = "aes-256-gcm-chunked-v1"


@dataclass(frozen=True)
class BackupOptions:
    kind: str = "full"                          # full | schema | tables
    tables: tuple[str, ...] = ()
    exclude_table_data: tuple[str, ...] = ()
    zstd_level: int = 3                         # level 3 stores less than pg_dump's gzip; 1 is ~10% faster, ~13% larger
    zstd_threads: int = 1                       # 1: zstd compresses in a worker thread of its own, as `zstd -T1` does (see dump_stream)
    connect_retries: int = 3
    pg_bin_dir: str | None = None
    checksum_max_bytes: int = 16 << 20         # tables up to this size get a content checksum


def _pg_dump_command(pg_dump: str, dsn: str, snapshot: str, opts: BackupOptions) -> list[str]:
    # -Z0: pg_dump 15 only has gzip, which is the bottleneck; zstd here is 3-4x faster.
    cmd = [pg_dump, "--format=custom", "--compress=0", f"--snapshot={snapshot}", "--no-password", f"--dbname={dsn}"]
    if opts.kind == "schema":
        cmd.append("--schema-only")
    for t in opts.tables if opts.kind == "tables" else ():
        cmd.append(f"--table={pg_dump_pattern(t)}")
    for t in opts.exclude_table_data:
        cmd.append(f"--exclude-table-data={pg_dump_pattern(t)}")
    return cmd


KINDS = ("full", "schema", "tables")


def confirm_stored(store: BackupStore, manifest: BackupManifest) -> None:
    """A backup reports success only once the store shows its data object, at its size, and its
    manifest: never on the strength of an upload call alone."""
    data = store.stat(manifest.object_key)
    if data is None or data.size != manifest.stored_bytes:
        found = "is missing" if data is None else f"has {data.size} bytes instead of {manifest.stored_bytes}"
        raise BackupFailed(f"backup {manifest.backup_id}: after the upload, the data object {found}; nothing was kept",
                           "something else deletes or rewrites objects in the store (another tool, a lifecycle rule): find it, then back up again")
    if store.stat(manifest_key(manifest.target, manifest.backup_id)) is None:
        raise BackupFailed(f"backup {manifest.backup_id}: the manifest is missing right after it was written",
                           "check the store's consistency and run the backup again")


def _stop_counter(conn: psycopg.Connection, counter: threading.Thread, patience: float = 30.0) -> bool:
    """Cancel the row-count thread's query until the thread returns, so that conn is never closed
    under it (psycopg's close() frees what a query running in another thread still uses), and a
    cancelled backup leaves no count(*) running on the server. A cancelled query aborts the
    transaction, so the counter's next queries fail at once. False if it would not stop (server
    silent): the caller then leaves conn open rather than closing it under the thread."""
    deadline = time.monotonic() + patience
    while counter.is_alive() and time.monotonic() < deadline:
        try:
            conn.cancel_safe(timeout=5)
        except psycopg.Error:
            pass
        counter.join(0.5)
    return not counter.is_alive()


def run_backup(
    target: str,
    dsn: str,
    store: BackupStore,
    key: BackupKey,
    opts: BackupOptions = BackupOptions(),
    progress: Callable[[Progress], None] | None = None,
    progress_interval: float = 5.0,
    on_warning: Callable[[str], None] | None = None,
) -> BackupManifest:
    if opts.kind not in KINDS:
        raise BackupFailed(f"unknown backup kind {opts.kind!r}", "use one of: full, schema, tables")
    if opts.tables and opts.kind != "tables":
        raise BackupFailed(f"tables were given for a {opts.kind!r} backup", "use kind 'tables' to back up selected tables")
    started = datetime.now(timezone.utc)
    backup_id = new_backup_id(target, started, secrets.token_hex(2))
    conn = connect(dsn, target, retries=opts.connect_retries)
    proc: PgProcess | None = None
    counter: threading.Thread | None = None
    try:
        # The dump, the row counts and the fingerprint all see this one snapshot.
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        conn.execute("SET row_security = off")
        # The row counts and checksums run beside the dump: parallel workers would only take CPU
        # from the backend serving pg_dump (on 2 cores, count(*) of a 3.7M-row table with two
        # workers made the backup ~10% slower) and worker slots from the database's own users.
        conn.execute("SET max_parallel_workers_per_gather = 0")
        server_version = conn.execute("SHOW server_version").fetchone()[0]
        server_major = conn.info.server_version // 10000
        pg_dump = find_binary("pg_dump", server_major, opts.pg_bin_dir)
        client = binary_version(pg_dump)
        check_client_version("pg_dump", client, server_major)
        tables = tables_in_dump(conn, opts.kind, list(opts.tables), list(opts.exclude_table_data))
        check_readable(conn, tables)
        fingerprint = schema_fingerprint(conn)
        size_hint = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0] // 2

        warnings: list[str] = []

        def warn(line: str) -> None:
            warnings.append(line)
            if on_warning:
                on_warning(line)

        # A password in the DSN reaches pg_dump through PGPASSWORD, never its command line.
        dump_dsn, dump_env = password_to_env(dsn)
        proc = PgProcess(_pg_dump_command(str(pg_dump), dump_dsn, snapshot, opts), env=dump_env, stdout=True, on_line=warn)
        enlarge_pipe(proc.stdout.fileno())
        stderr = proc.messages
        counts: dict[str, int] = {}
        checksums: dict[str, str] = {}
        count_error: list[BaseException] = []

        def count() -> None:
            try:
                counts.update(count_rows(conn, tables))
                checksums.update(table_checksums(conn, tables, opts.checksum_max_bytes))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the streaming thread
                count_error.append(exc)

        # The counter shares conn (and so the exported snapshot's own transaction) rather than
        # opening a second connection that imports it: one connection slot and one login per
        # backup, and no import that can fail on its own. The price is the rule it keeps: conn
        # is closed only after the counter has returned (_stop_counter).
        counter = threading.Thread(target=count, name="row-count", daemon=True)
        counter.start()
        raw_total = [0]

        def dump_stream() -> Iterator[bytes]:
            compressor = zstandard.ZstdCompressor(level=opts.zstd_level, threads=opts.zstd_threads).compressobj()
            t0 = last = time.monotonic()
            stored = 0
            fd = proc.stdout.fileno()
            # The same shape as `pg_dump | zstd -T1`: this thread drains the pipe as soon as pg_dump
            # writes, and zstd_threads=1 hands compression to zstd's own worker thread (no GIL), so
            # compress() only copies the input into the worker's job buffer and returns at once.
            # Neither pg_dump nor the server backend feeding it ever waits for the compressor
            # while that buffer has room. Compressing in this thread (zstd_threads=0), or sleeping
            # after short reads to batch them, made pg_dump block on the full pipe for as long as
            # each compress call or sleep took; on a busy machine every such stall also costs a
            # wait for the CPU to come back, and the backup took 1.3-1.5x the C pipeline's time
            # (benchmarks/backup_bench.py --load, docs/benchmarks.md).
            while data := os.read(fd, READ_SIZE):
                raw_total[0] += len(data)
                out = compressor.compress(data)
                if out:
                    stored += len(out)
                    yield out
                if progress and time.monotonic() - last >= progress_interval:
                    last = time.monotonic()
                    progress(Progress(raw_total[0], stored, last - t0))
            # The stream only ends cleanly if pg_dump and the row counts succeeded; raising here
            # makes the store abort the upload, so a killed pg_dump never becomes a backup.
            rc = proc.wait()
            if rc != 0:
                counter.join()
                if count_error:
                    raise count_error[0]  # the cause; pg_dump only lost the snapshot it shared
                how = f"was killed by signal {-rc}" if rc < 0 else f"exited with code {rc}"
                raise BackupFailed(
                    f"pg_dump of {target} {how}; nothing was stored. Its last messages:\n{stderr.text() or '(none)'}",
                    "fix the cause above and run the backup again",
                )
            counter.join()
            if count_error:
                raise count_error[0]
            tail = compressor.flush()
            stored += len(tail)
            yield tail
            if progress:
                progress(Progress(raw_total[0], stored, time.monotonic() - t0))

        obj_key = data_key(target, backup_id)
        with WriterLease(store, target, backup_id) as lease:
            stored = store.put(obj_key, encrypt_stream(dump_stream(), key), size_hint=size_hint)
            stderr.text()
            manifest = BackupManifest(
                backup_id=backup_id, target=target, kind=opts.kind,
                database=conn.info.dbname, server=f"{conn.info.host}:{conn.info.port}",
                server_version=server_version, pg_dump_version=f"{client[0]}.{client[1]}",
                started_at=started.isoformat(), finished_at=datetime.now(timezone.utc).isoformat(),
                raw_bytes=raw_total[0], stored_bytes=stored.size, sha256=stored.sha256,
                object_key=obj_key, location=stored.location,
                compression=f"zstd-{opts.zstd_level}", encryption=ENCRYPTION, key_id=key.key_id,
                table_rows=counts, table_checksums=checksums, schema_fingerprint=fingerprint,
                selected_tables=sorted(tables) if opts.kind == "tables" else [],
                excluded_table_data=list(opts.exclude_table_data), pg_dump_warnings=warnings,
            )
            committed = False
            try:
                lease.check_held()
                store.put_bytes(manifest_key(target, backup_id), seal_manifest(manifest, key))
                confirm_stored(store, manifest)
                committed = True
            finally:
                if not committed:
                    # A data object without a manifest is never valid, and a manifest without its
                    # data must not outlive this failure: remove both (ours, just written).
                    for k in (manifest_key(target, backup_id), obj_key):
                        try:
                            store.delete(k)
                        except DbopsError:
                            pass
        return manifest
    except DbopsError:
        raise
    except psycopg.Error as exc:
        raise BackupFailed(f"backup of {target} failed: {redact(str(exc)).strip()}", "check the database log and run again") from None
    finally:
        if proc:
            proc.close()  # pg_dump and its connection gone before anything else is released
        if counter is None or _stop_counter(conn, counter):
            conn.close()
