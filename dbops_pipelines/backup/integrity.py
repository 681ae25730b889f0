"""Check a stored backup without restoring it: re-read the object, verify its sha256, decrypt and
authenticate every record, read the archive's table of contents (backup/toc.py: exact names) and
have ``pg_restore --list`` read it too (its dump ids must be ones we read). pg_restore runs through
pgtools.PgProcess, the one process runner, and is chosen by the pg_dump version that wrote the
archive."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from dbops_pipelines.backup.crypto import BackupKey
from dbops_pipelines.backup.manifest import BackupManifest
from dbops_pipelines.backup.snapshot import split_table
from dbops_pipelines.backup.toc import Toc, read_toc
from dbops_pipelines.errors import ConfigError, IntegrityError
from dbops_pipelines.pgtools import PgProcess, pick_client
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


def pick_pg_restore(manifest: BackupManifest, pg_bin_dir: str | None = None) -> str:
    """``pg_restore --list`` connects to no server: it only has to read the archive, so it must
    be as new as the pg_dump that wrote it (an older one refuses a newer archive format). Not
    having one is the environment's fault, not the backup's: ConfigError, never IntegrityError."""
    dumped_by = manifest.pg_dump_version or manifest.server_version  # "15.4"; older manifests lack the first
    major = re.match(r"\s*(\d+)", dumped_by or "")
    if not major:
        raise IntegrityError(f"backup {manifest.backup_id}: its manifest records no readable pg_dump or server version "
                             f"({dumped_by!r})", "check the backup with `pg_restore --list` by hand; take a new backup")
    need = {f"the archive of backup {manifest.backup_id} (written by pg_dump {dumped_by})": int(major[1])}
    return str(pick_client("pg_restore", need, pg_bin_dir, ConfigError)[0])


class _Drain:
    """Reads a pipe to its end in a thread (pg_restore blocks on a full stdout pipe otherwise,
    while we block writing its stdin)."""

    def __init__(self, stream):
        self._stream, self._chunks = stream, []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for chunk in iter(lambda: self._stream.read1(1 << 16), b""):
                self._chunks.append(chunk)
        except (OSError, ValueError):
            pass  # closed under us: PgProcess stopped the program after a failure, nothing to read

    def text(self) -> str:
        self._thread.join()
        return b"".join(self._chunks).decode(errors="replace")


def check_backup(store: BackupStore, manifest: BackupManifest, keys: Iterable[BackupKey], pg_bin_dir: str | None = None) -> IntegrityReport:
    pg_restore = pick_pg_restore(manifest, pg_bin_dir)  # before reading anything: fail fast, blame no backup
    label = f"backup {manifest.backup_id}"
    # PgProcess stops and reaps pg_restore whenever the block is left by an exception (a damaged
    # backup, Ctrl-C, SIGTERM's Terminated). Nothing touches disk: the archive goes through a pipe.
    with PgProcess([pg_restore, "--list"], stdin=True, stdout=True, error=ConfigError) as proc:
        listing = _Drain(proc.stdout)
        raw, feeding = 0, True
        toc, stream = read_toc(open_dump_stream(store, manifest, keys), label)
        # Read the whole object even after pg_restore has its TOC: the check is the sha256 and
        # the authentication of every record, not just the header.
        for chunk in stream:
            raw += len(chunk)
            if feeding:
                try:
                    proc.stdin.write(chunk)
                except BrokenPipeError:
                    feeding = False  # it has read what it needs (or failed: its exit code says)
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
        rc = proc.wait()
        listed_text = listing.text()
    if rc != 0:
        how = f"was killed by signal {-rc}" if rc < 0 else f"failed (exit {rc})"
        raise IntegrityError(
            f"{label}: pg_restore --list ({pg_restore}) {how}: {proc.messages.text() or '(no message)'}",
            "the archive is unreadable; restore from another backup",
        )
    listed = listed_ids(listed_text)
    if unknown := set(listed) - {e.dump_id for e in toc.entries}:
        raise IntegrityError(
            f"{label}: pg_restore lists {len(unknown)} entries (e.g. id {min(unknown)}) that dbops did not read in the archive's table of contents",
            "report this with the pg_dump version; check the backup with `pg_restore --list` meanwhile",
        )
    found, missing = tables_with_data(toc, listed, sorted(manifest.table_rows))
    if missing:
        raise IntegrityError(
            f"{label}: the archive has no data for {', '.join(missing)} although the manifest counts rows for them",
            "do not rely on this backup; take a new one and investigate",
        )
    return IntegrityReport(manifest.backup_id, raw, len(listed), tuple(found))
