"""Check a stored backup without restoring it: re-read the object, verify its sha256, decrypt and
authenticate every record, read the archive's table of contents (backup/toc.py: exact names) and
have ``pg_restore --list`` read it too (its dump ids must be ones we read)."""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from dbops_pipelines.backup.crypto import BackupKey
from dbops_pipelines.backup.manifest import BackupManifest
from dbops_pipelines.backup.snapshot import split_table
from dbops_pipelines.backup.toc import Toc, read_toc
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


def listed_ids(listing: str) -> list[int]:
    """The dump id starting each entry line of ``pg_restore --list``: the only field of that output
    that is unambiguous (names are printed unquoted, with newlines turned into spaces)."""
    return [int(m[1]) for line in listing.splitlines() if (m := re.match(r"(\d+);", line))]


def tables_with_data(toc: Toc, listed: Iterable[int], tables: Iterable[str]) -> tuple[list[str], list[str]]:
    """(found, missing) of ``tables`` (manifest keys): found if the archive has their TABLE DATA
    entry, by exact schema and name, and pg_restore lists it too."""
    listed = set(listed)
    found, missing = [], []
    for name in tables:
        entry = toc.find("TABLE DATA", *split_table(name))
        (found if entry and entry.dump_id in listed else missing).append(name)
    return found, missing


def check_backup(store: BackupStore, manifest: BackupManifest, keys: Iterable[BackupKey], pg_bin_dir: str | None = None) -> IntegrityReport:
    pg_restore = find_binary("pg_restore", int(manifest.server_version.split(".")[0]), pg_bin_dir)
    proc = subprocess.Popen([str(pg_restore), "--list"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out: dict[str, bytes] = {}
    reader = threading.Thread(target=lambda: out.update(stdout=proc.stdout.read(), stderr=proc.stderr.read()), daemon=True)
    reader.start()
    raw, feeding = 0, True
    try:
        toc, stream = read_toc(open_dump_stream(store, manifest, keys), f"backup {manifest.backup_id}")
        # Read the whole object even after pg_restore has its TOC: the check is the sha256 and
        # the authentication of every record, not just the header.
        for chunk in stream:
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
    listed = listed_ids(out["stdout"].decode(errors="replace"))
    if unknown := set(listed) - {e.dump_id for e in toc.entries}:
        raise IntegrityError(
            f"backup {manifest.backup_id}: pg_restore lists {len(unknown)} entries (e.g. id {min(unknown)}) that dbops did not read in the archive's table of contents",
            "report this with the pg_dump version; check the backup with `pg_restore --list` meanwhile",
        )
    found, missing = tables_with_data(toc, listed, sorted(manifest.table_rows))
    if missing:
        raise IntegrityError(
            f"backup {manifest.backup_id}: the archive has no data for {', '.join(missing)} although the manifest counts rows for them",
            "do not rely on this backup; take a new one and investigate",
        )
    return IntegrityReport(manifest.backup_id, raw, len(listed), tuple(found))
