"""Check a stored backup without restoring it: re-read the object, verify its sha256, decrypt and
authenticate every record, and list the archive's table of contents with ``pg_restore --list``."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from dbops_pipelines.backup.crypto import BackupKey
from dbops_pipelines.backup.manifest import BackupManifest
from dbops_pipelines.backup.snapshot import split_table
from dbops_pipelines.errors import IntegrityError
from dbops_pipelines.pgtools import find_binary
from dbops_pipelines.restore import open_dump_stream
from dbops_pipelines.storage.base import BackupStore


@dataclass(frozen=True)
class IntegrityReport:
    backup_id: str
    raw_bytes: int
    toc_entries: int
    tables_with_data: tuple[str, ...]   # manifest tables whose TABLE DATA entry is in the archive


def _parse_toc(listing: str) -> tuple[int, list[str]]:
    """Entry count and the "schema name owner" text of every TABLE DATA line.

    pg_restore prints names unquoted, so a name with spaces cannot be split reliably; callers
    match known "schema table" prefixes instead of parsing names out.
    """
    entries, data = 0, []
    for line in listing.splitlines():
        if not line or line.startswith(";"):
            continue
        entries += 1
        _, _, rest = line.partition(" TABLE DATA ")  # e.g. "3345; 0 16390 TABLE DATA public users postgres"
        if rest:
            data.append(rest)
    return entries, data


def tables_with_data(listing_data: list[str], tables: list[str]) -> tuple[list[str], list[str]]:
    """(found, missing) of ``tables`` ("schema.table") among TABLE DATA entries."""
    found, missing = [], []
    for name in tables:
        schema, table = split_table(name)
        (found if any(rest.startswith(f"{schema} {table} ") for rest in listing_data) else missing).append(name)
    return found, missing


def check_backup(store: BackupStore, manifest: BackupManifest, keys: Iterable[BackupKey], pg_bin_dir: str | None = None) -> IntegrityReport:
    pg_restore = find_binary("pg_restore", int(manifest.server_version.split(".")[0]), pg_bin_dir)
    proc = subprocess.Popen([str(pg_restore), "--list"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out: dict[str, bytes] = {}
    reader = threading.Thread(target=lambda: out.update(stdout=proc.stdout.read(), stderr=proc.stderr.read()), daemon=True)
    reader.start()
    raw, feeding = 0, True
    try:
        # Read the whole object even after pg_restore has its TOC: the check is the sha256 and
        # the authentication of every record, not just the header.
        for chunk in open_dump_stream(store, manifest, keys):
            raw += len(chunk)
            if feeding:
                try:
                    proc.stdin.write(chunk)
                except BrokenPipeError:
                    feeding = False
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
    except BaseException:
        proc.kill()
        raise
    finally:
        rc = proc.wait()
        reader.join()
    if rc != 0:
        raise IntegrityError(
            f"backup {manifest.backup_id}: pg_restore --list failed: {out.get('stderr', b'').decode(errors='replace').strip()}",
            "the archive is unreadable; restore from another backup",
        )
    entries, data = _parse_toc(out["stdout"].decode(errors="replace"))
    found, missing = tables_with_data(data, sorted(manifest.table_rows))
    if missing:
        raise IntegrityError(
            f"backup {manifest.backup_id}: the archive has no data for {', '.join(missing)} although the manifest counts rows for them",
            "do not rely on this backup; take a new one and investigate",
        )
    return IntegrityReport(manifest.backup_id, raw, entries, tuple(found))
