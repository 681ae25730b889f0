"""wal-fetch (restore_command): write one archived file where PostgreSQL wants it, and prefetch
the segments that follow into the spool (see the package docstring: fetch, prefetch)."""

from __future__ import annotations

import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from dbops_pipelines.errors import DbopsError
from dbops_pipelines.wal.archive.objects import read_object
from dbops_pipelines.wal.archive.spool import Log, Spool, quiet, write_atomic
from dbops_pipelines.wal.naming import SEGMENT, Segment, archive_key, is_wal_file, parse_segment

if TYPE_CHECKING:
    from dbops_pipelines.backup.crypto import BackupKey
    from dbops_pipelines.config import WalSettings
    from dbops_pipelines.context import FleetContext
    from dbops_pipelines.storage.base import BackupStore

MAX_PREFETCH_THREADS = 16


def _fetch_to(store: BackupStore, keys: list[BackupKey], cluster: str, name: str, dest: Path) -> dict:
    """Authenticate and write ``name`` to ``dest`` atomically; nothing at ``dest`` on failure."""
    tmp = dest.with_name(f".{dest.name}.dbops-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as fh:
            header = read_object(store, keys, cluster, name, fh.write)
        os.replace(tmp, dest)
        return header
    except OSError as exc:
        raise DbopsError(f"cannot write {dest}: {exc.strerror or exc}", "check free space and permissions") from None
    finally:
        tmp.unlink(missing_ok=True)


def _prefetch(store: BackupStore, keys: list[BackupKey], cluster: str, after: Segment, segment_size: int,
              count: int, spool: Spool, log: Log) -> int:
    folder = spool.prefetch_dir()
    wanted, seg = [], after
    for _ in range(count):
        seg = seg.next()
        name = seg.name(segment_size)
        if not spool.has_prefetched(name):
            wanted.append(name)
    if not wanted:
        return 0

    def one(name: str) -> bool:
        if store.stat(archive_key(cluster, name)) is None:
            return False
        header = _fetch_to(store, keys, cluster, name, folder / name)
        write_atomic(folder / f"{name}.sha256", f"{header['sha256']} {header['size']}\n".encode())
        return True

    done = 0
    with ThreadPoolExecutor(max_workers=min(len(wanted), MAX_PREFETCH_THREADS), thread_name_prefix="wal-prefetch") as pool:
        for name, fut in [(n, pool.submit(one, n)) for n in wanted]:
            try:
                done += fut.result()
            except Exception as exc:  # noqa: BLE001 - best effort: fetched (and reported) when asked for
                log(f"note: {name} was not prefetched: {exc.message if isinstance(exc, DbopsError) else exc}")
    return done


def fetch(ctx: FleetContext, cluster: str, name: str, dest_path: str | os.PathLike, settings: WalSettings,
          log: Log = quiet) -> bool:
    """restore_command: write the archived ``name`` to ``dest_path``; False when the archive has
    no such file. IntegrityError when the stored object is damaged (nothing written).

    The file is renamed into place complete, but not fsynced: PostgreSQL fsyncs a restored
    file itself when it keeps it (KeepFileRestoredFromArchive's durable_rename), and after a
    crash recovery asks the archive again for whatever it had not kept."""
    if not is_wal_file(name):
        raise DbopsError(f"{name!r} is not a WAL file name", "restore_command must be `dbops wal-fetch %f %p ...`")
    dest = Path(os.path.abspath(dest_path))
    cwd = Path(os.getcwd())
    spool = Spool.locate(ctx.store, cluster, settings, cwd if (cwd / "PG_VERSION").exists() else None)
    segment = SEGMENT.fullmatch(name) is not None
    if segment and spool.take_prefetched(name, dest):
        return True
    store = ctx.store
    if store.stat(archive_key(cluster, name)) is None:
        return False
    ahead = None
    if settings.prefetch and segment:
        spool.prune()
        known = spool.segment_size()
        try:
            current = parse_segment(name, known) if known else None
        except ValueError:
            current = None
        if current is not None:   # the size is known from an earlier call: fetch ahead while this one is fetched
            ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wal-prefetch-batch")
            batch = ahead.submit(_prefetch, store, ctx.read_keys, cluster, current, known, settings.prefetch, spool, log)
    try:
        header = _fetch_to(store, ctx.read_keys, cluster, name, dest)
    finally:
        if ahead is not None:
            try:
                batch.result()
            except (DbopsError, OSError, ValueError) as exc:
                log(f"note: prefetch after {name} stopped: {exc}")
            ahead.shutdown()
    if settings.prefetch and segment and ahead is None:
        try:
            spool.record_segment_size(header["size"])
            _prefetch(store, ctx.read_keys, cluster, parse_segment(name, header["size"]), header["size"],
                      settings.prefetch, spool, log)
        except (DbopsError, OSError, ValueError) as exc:
            log(f"note: prefetch after {name} stopped: {exc}")
    return True
