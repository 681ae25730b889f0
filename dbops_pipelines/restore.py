"""Stored backup -> authenticated, decrypted, decompressed stream -> pg_restore.

Nothing unauthenticated ever reaches the destination: each record is checked before its bytes
move on, the last record is held back until the stream's end authenticates, and with one job
the whole restore runs in a single transaction, so a failure at any point rolls everything back.
Parallel restore (jobs > 1) needs a seekable file: the stream is authenticated completely into a
private temporary file first, and pg_restore starts only then.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import zstandard
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from dbops_pipelines.backup.catalog import find_backup
from dbops_pipelines.backup.crypto import BackupKey, decrypt_stream, manifest_mac
from dbops_pipelines.progress import Progress
from dbops_pipelines.backup.manifest import BackupManifest
from dbops_pipelines.backup.snapshot import split_table
from dbops_pipelines.redact import redact
from dbops_pipelines.errors import EncryptionKeyError, IntegrityError, RestoreFailed
from dbops_pipelines.pgtools import StderrCollector, binary_version, find_binary
from dbops_pipelines.storage.base import BackupStore


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


def check_manifest(manifest: BackupManifest, keys: Iterable[BackupKey]) -> None:
    """The manifest is the record everything else trusts: refuse one that was altered."""
    key = next(k for k in keys if k.key_id == manifest.key_id)
    expected = manifest_mac(key, manifest.signed_payload())
    if not manifest.mac or not hmac.compare_digest(expected, manifest.mac):
        raise IntegrityError(
            f"the manifest of backup {manifest.backup_id} (key id {manifest.key_id}) has been altered or is unsigned",
            "do not trust this backup's record; restore from another backup and check who can write to the store",
        )


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
    check_manifest(manifest, keys)
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


def table_selection_schema(tables: list[str]) -> str | None:
    """The one schema of a table selection (None for no selection). pg_restore matches --schema
    and --table independently, so a.x + b.y would also bring a.y and b.x: refuse mixed schemas."""
    schemas = sorted({split_table(t)[0] for t in tables})
    if len(schemas) > 1:
        raise RestoreFailed(f"selected tables span several schemas ({', '.join(schemas)})",
                            "restore the tables of one schema at a time")
    return schemas[0] if schemas else None


def pg_restore_command(pg_restore: str, dsn: str, tables: Iterable[str], jobs: int, clean: bool, source: str | None,
                       no_privileges: bool = False) -> list[str]:
    cmd = [pg_restore, "--no-password", "--exit-on-error", f"--dbname={dsn}", "--no-owner"]
    if no_privileges:
        cmd.append("--no-privileges")
    cmd.append(f"--jobs={jobs}" if jobs > 1 else "--single-transaction")
    if clean:
        cmd += ["--clean", "--if-exists"]
    tables = list(tables)
    schema = table_selection_schema(tables)
    if schema:
        cmd.append(f"--schema={schema}")
    for t in tables:
        cmd.append(f"--table={split_table(t)[1]}")
    if source:
        cmd.append(source)
    return cmd


def _password_to_env(dsn: str) -> tuple[str, dict]:
    """A password in the destination DSN goes to pg_restore through PGPASSWORD, never on its
    command line, where any local user could read it in the process list."""
    info = conninfo_to_dict(dsn)
    password = info.pop("password", None)
    if password is None:
        return dsn, dict(os.environ)
    return make_conninfo("", **info), {**os.environ, "PGPASSWORD": password}


def restore_backup(
    store: BackupStore,
    backup_id: str,
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
    table_selection_schema(tables)  # before anything is read or started
    to_dsn, env = _password_to_env(to_dsn)
    manifest = find_backup(store, backup_id).manifest
    server_major = int(manifest.server_version.split(".")[0])
    pg_restore = str(find_binary("pg_restore", server_major, pg_bin_dir))
    binary_version(pg_restore)
    stream = open_dump_stream(store, manifest, keys)
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

    if jobs > 1:
        with tempfile.TemporaryDirectory(prefix="dbops-restore-") as tmp:
            path = os.path.join(tmp, "dump.pgc")
            with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as fh:
                raw = pump(fh.write)
            proc = subprocess.Popen(pg_restore_command(pg_restore, to_dsn, tables, jobs, clean, path, no_privileges),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
            stderr = StderrCollector(proc.stderr, warn)
            rc = proc.wait()
    else:
        proc = subprocess.Popen(pg_restore_command(pg_restore, to_dsn, tables, jobs, clean, None, no_privileges),
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        stderr = StderrCollector(proc.stderr, warn)
        try:
            raw = pump(proc.stdin.write)
            proc.stdin.close()
        except BrokenPipeError:
            raw = 0  # pg_restore stopped reading: its exit code and stderr say why
        except BaseException:
            # Killing pg_restore aborts its single transaction: nothing is committed.
            proc.kill()
            proc.wait()
            raise
        rc = proc.wait()
    if rc != 0:
        raise RestoreFailed(
            f"pg_restore of backup {backup_id} into {redact(to_dsn)} failed (exit {rc})"
            + (" and was rolled back" if jobs == 1 else "; the destination may be partly restored")
            + f". Its last messages:\n{stderr.text() or '(none)'}",
            "fix the cause (use --clean to replace existing objects) and restore again",
        )
    stderr.text()
    return RestoreResult(backup_id, time.monotonic() - t0, raw, tuple(warnings))
