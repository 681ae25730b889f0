"""Stored backup -> authenticated, decrypted, decompressed stream -> pg_restore.

Nothing unauthenticated ever reaches the destination: each record is checked before its bytes
move on, the last record is held back until the stream's end authenticates, and with one job
the whole restore runs in a single transaction, so a failure at any point rolls everything back.
Parallel restore (jobs > 1) needs a seekable file: the stream is authenticated completely into a
private temporary file first, and pg_restore starts only then.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import zstandard

from dbops_pipelines.backup.crypto import BackupKey, decrypt_stream
from dbops_pipelines.progress import Progress
from dbops_pipelines.backup.manifest import BackupManifest
from dbops_pipelines.redact import redact
from dbops_pipelines.errors import EncryptionKeyError, IntegrityError, RestoreFailed
from dbops_pipelines.pgtools import PgProcess, connect, password_to_env, pick_client, private_tempdir
from dbops_pipelines.storage.base import BackupStore
from dbops_pipelines.table_selection import TableSelection, parse_selection, select_tables


@dataclass(frozen=True)
class RestoreResult:
    backup_id: str
    seconds: float
    raw_bytes: int
    warnings: tuple[str, ...]


def _checked(chunks: Iterable[bytes], manifest: BackupManifest) -> Iterator[bytes]:
    """Pass the stored bytes through, failing at the end if size or sha256 differ from the manifest."""
    sha, size = hashlib.sha256(), 0
    for chunk in chunks:
        sha.update(chunk)
        size += len(chunk)
        yield chunk
    if size < manifest.stored_bytes:
        problem = f"is truncated: the stored object has {size} bytes, its manifest says {manifest.stored_bytes}"
    elif size > manifest.stored_bytes:
        problem = f"has grown: the stored object has {size} bytes, its manifest says {manifest.stored_bytes}"
    elif sha.hexdigest() != manifest.sha256:
        problem = f"does not match its manifest's sha256 ({sha.hexdigest()[:12]}… vs {manifest.sha256[:12]}…)"
    else:
        return
    raise IntegrityError(f"backup {manifest.backup_id} (key id {manifest.key_id}) {problem}",
                         "do not use this backup; restore from another one")


def _held_back(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Yield each item only once the next one exists (or the stream ended cleanly), so the tail
    of a dump reaches pg_restore only after the final record and the checksum verified."""
    prev = None
    for chunk in chunks:
        if prev is not None:
            yield prev
        prev = chunk
    if prev is not None:
        yield prev


def open_dump_stream(store: BackupStore, manifest: BackupManifest, keys: Iterable[BackupKey]) -> Iterator[bytes]:
    """The plain pg_dump archive of a backup, authenticated record by record."""
    keys = list(keys)
    if manifest.key_id not in {k.key_id for k in keys}:
        raise EncryptionKeyError(
            f"backup {manifest.backup_id} was encrypted with key id {manifest.key_id}; the configured keys are "
            f"{', '.join(k.key_id for k in keys) or 'none'}",
            "set the key it was written with (encryption.key_env, or encryption.previous_key_envs after a rotation)",
        )
    label = f"backup {manifest.backup_id} (key id {manifest.key_id})"
    plain = decrypt_stream(_checked(store.get(manifest.object_key), manifest), keys, label)
    decompressor = zstandard.ZstdDecompressor().decompressobj()

    def decompressed() -> Iterator[bytes]:
        for chunk in plain:
            try:
                out = decompressor.decompress(chunk)
            except zstandard.ZstdError as exc:
                raise IntegrityError(f"{label} does not decompress: {exc}", "restore from another backup") from None
            if out:
                yield out
        if not decompressor.eof:
            raise IntegrityError(f"{label} ends in the middle of its compressed data", "restore from another backup")

    return _held_back(decompressed())


def pg_restore_command(pg_restore: str, dsn: str, selection: TableSelection | None, jobs: int, clean: bool, source: str | None,
                       no_privileges: bool = False) -> list[str]:
    cmd = [pg_restore, "--no-password", "--exit-on-error", f"--dbname={dsn}", "--no-owner"]
    if no_privileges:
        cmd.append("--no-privileges")
    cmd.append(f"--jobs={jobs}" if jobs > 1 else "--single-transaction")
    if clean:
        cmd += ["--clean", "--if-exists"]
    if selection is not None:
        # Exact entries, never --schema/--table name matching (table_selection.py says why).
        cmd.append(f"--use-list={selection.list_path}")
    if source:
        cmd.append(source)
    return cmd


def _password_to_env(dsn: str) -> tuple[str, dict]:
    """A password in the destination DSN goes to pg_restore through PGPASSWORD, never on its
    command line, where any local user could read it in the process list."""
    return password_to_env(dsn, RestoreFailed)


def _pick_pg_restore(manifest: BackupManifest, to_dsn: str, env: dict, pg_bin_dir: str | None) -> str:
    """pg_restore must read the archive (as new as the pg_dump that wrote it) and speak to the
    destination (as new as its server): the destination is asked for its version."""
    password = {"password": env["PGPASSWORD"]} if "PGPASSWORD" in env else {}
    with connect(to_dsn, "the restore destination", retries=1, error=RestoreFailed, **password) as conn:
        dest = conn.info.server_version // 10000
    needs = {f"the destination server (PostgreSQL {dest})": dest}
    dumped_by = manifest.pg_dump_version or manifest.server_version  # "15.4"
    needs[f"the archive of backup {manifest.backup_id} (written by pg_dump {dumped_by})"] = int(dumped_by.split(".")[0])
    return str(pick_client("pg_restore", needs, pg_bin_dir, RestoreFailed)[0])


def restore_backup(
    store: BackupStore,
    manifest: BackupManifest,
    keys: Iterable[BackupKey],
    to_dsn: str,
    tables: Iterable[str] = (),
    jobs: int = 1,
    clean: bool = False,
    no_privileges: bool = False,
    pg_bin_dir: str | None = None,
    progress: Callable[[Progress], None] | None = None,
    progress_interval: float = 5.0,
    on_warning: Callable[[str], None] | None = None,
) -> RestoreResult:
    tables = list(tables)
    parse_selection(tables)  # before anything is read or started
    to_dsn, env = _password_to_env(to_dsn)
    backup_id = manifest.backup_id  # an authenticated manifest (catalog.find_backup / list_backups)
    pg_restore = _pick_pg_restore(manifest, to_dsn, env, pg_bin_dir)
    stream, selection = select_tables(open_dump_stream(store, manifest, keys), tables, f"backup {backup_id}")
    t0 = time.monotonic()
    warnings: list[str] = []

    def warn(line: str) -> None:
        warnings.append(line)
        if on_warning:
            on_warning(line)

    def pump(write: Callable[[bytes], object]) -> int:
        total, last = 0, time.monotonic()
        for chunk in stream:
            write(chunk)
            total += len(chunk)
            if progress and time.monotonic() - last >= progress_interval:
                last = time.monotonic()
                progress(Progress(total, total, last - t0))
        if progress:
            progress(Progress(total, total, time.monotonic() - t0))
        return total

    # PgProcess stops pg_restore (and its workers) on any exception, Ctrl-C and SIGTERM included:
    # with one job that aborts its single transaction; with several, nothing more is written.
    if jobs > 1:
        # Inner block first: pg_restore is stopped before the decrypted dump is removed.
        with private_tempdir("dbops-restore-") as tmp:
            path = str(tmp / "dump.pgc")
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as fh:
                raw = pump(fh.write)
            with PgProcess(pg_restore_command(pg_restore, to_dsn, selection, jobs, clean, path, no_privileges),
                           env=env, on_line=warn, error=RestoreFailed) as proc:
                rc = proc.wait()
    else:
        with PgProcess(pg_restore_command(pg_restore, to_dsn, selection, jobs, clean, None, no_privileges),
                       env=env, stdin=True, on_line=warn, error=RestoreFailed) as proc:
            try:
                raw = pump(proc.stdin.write)
                proc.stdin.close()
            except BrokenPipeError:
                raw = 0  # pg_restore stopped reading: its exit code and stderr say why
            rc = proc.wait()
    if rc != 0:
        how = f"was killed by signal {-rc}" if rc < 0 else f"failed (exit {rc})"
        raise RestoreFailed(
            f"pg_restore of backup {manifest.backup_id} into {redact(to_dsn)} {how}"
            + (" and was rolled back" if jobs == 1 else "; the destination may be partly restored")
            + f". Its last messages:\n{proc.messages.text() or '(none)'}",
            "fix the cause (use --clean to replace existing objects) and restore again",
        )
    return RestoreResult(manifest.backup_id, time.monotonic() - t0, raw, tuple(warnings))
