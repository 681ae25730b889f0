"""wal-push (archive_command): store one finished WAL file, and other ``.ready`` files alongside
it (see the package docstring: push, parallel push)."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dbops_pipelines.errors import ConfigError, DbopsError, IntegrityError, ObjectExists
from dbops_pipelines.wal.archive.identity import ClusterIdentity, check_identity, find_data_dir, read_identity
from dbops_pipelines.wal.archive.objects import OBJECT_FORMAT, OBJECT_VERSION, read_object, store_file
from dbops_pipelines.wal.archive.spool import Log, Spool, file_sha256, quiet
from dbops_pipelines.wal.naming import HISTORY, archive_key, cluster_prefix, is_wal_file

if TYPE_CHECKING:
    from dbops_pipelines.config import WalSettings
    from dbops_pipelines.context import FleetContext

BATCH_PER_THREAD = 8                  # one wal-push stores up to push_parallel * this extra .ready files


class WalConflict(IntegrityError):
    """A WAL file of the same name with different content is already archived (never overwritten)."""


@dataclass
class PushedFile:
    name: str
    outcome: str              # stored | already archived | already pushed | failed
    sha256: str | None = None
    size: int | None = None
    stored_bytes: int | None = None
    error: str | None = None


@dataclass
class PushResult:
    name: str
    outcome: str              # stored | already archived | already pushed
    sha256: str
    size: int
    key: str
    stored_bytes: int | None
    others: list[PushedFile] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        extra = [o for o in self.others if o.outcome != "failed"]
        failed = [o for o in self.others if o.outcome == "failed"]
        text = f"{self.name}: {self.outcome}"
        if self.others:
            text += f"; {len(extra)} other .ready file(s) pushed alongside" + (f", {len(failed)} failed" if failed else "")
        return text + f" in {self.seconds:.2f} s"


def _ready_files(pg_wal: Path, exclude: str, spool: Spool, limit: int) -> list[str]:
    try:
        names = [e.name[:-6] for e in os.scandir(pg_wal / "archive_status") if e.name.endswith(".ready")]
    except OSError:
        return []
    names = [n for n in names if n != exclude and is_wal_file(n) and spool.pushed(n) is None]
    names.sort(key=lambda n: (not HISTORY.fullmatch(n), n))
    return names[:limit]


def _push_one(ctx: FleetContext, cluster: str, path: Path, level: int, spool: Spool, identity: ClusterIdentity,
              known: tuple[str, int] | None = None) -> PushedFile:
    name = path.name
    sha, size = known or file_sha256(path)
    header = {"format": OBJECT_FORMAT, "version": OBJECT_VERSION, "cluster": cluster_prefix(cluster), "name": name,
              "size": size, "sha256": sha, "system_identifier": identity.system_identifier}
    try:
        stored = store_file(ctx.store, ctx.write_key, cluster, path, header, level)
        outcome = "stored"
    except ObjectExists:
        try:
            theirs = read_object(ctx.store, ctx.read_keys, cluster, name)
        except IntegrityError as exc:
            raise IntegrityError(
                f"{name} is already in the archive, but the stored copy is damaged ({exc.message}); it was not replaced",
                f"move the damaged object {ctx.store.location(archive_key(cluster, name))} aside (keep it for "
                "investigation); the next wal-push stores the local file again") from None
        if theirs["sha256"] != sha or theirs["size"] != size:
            raise WalConflict(
                f"{name} is already archived with different content: stored sha256 {theirs['sha256']} "
                f"({theirs['size']} bytes), local sha256 {sha} ({size} bytes); nothing was overwritten",
                "two clusters (or a restored copy) are archiving under the same name: find out which WAL is the "
                "right one before doing anything; never delete the stored object to make this go away")
        stored, outcome = None, "already archived"
    spool.record_pushed(name, sha)
    return PushedFile(name, outcome, sha, size, stored)


def push(ctx: FleetContext, cluster: str, wal_path: str | os.PathLike, settings: WalSettings,
         data_dir: str | os.PathLike | None = None, log: Log = quiet) -> PushResult:
    """archive_command: store ``wal_path`` (relative to the data directory, the working
    directory) and, alongside, other .ready files; returns only when ``wal_path`` is stored
    (see the module docstring). Raises WalConflict, ForeignCluster, IntegrityError or another
    DbopsError otherwise."""
    t0 = time.monotonic()
    path = Path(os.path.abspath(wal_path))
    name = path.name
    if not is_wal_file(name):
        raise DbopsError(f"{name!r} is not a WAL file name", "archive_command must be `dbops wal-push %p ...`")
    data = Path(data_dir) if data_dir is not None else find_data_dir(path)
    spool = Spool.locate(ctx.store, cluster, settings, data)
    _refuse_store_inside(ctx, data)
    sha, size = file_sha256(path)
    key = archive_key(cluster, name)
    if spool.pushed(name) == sha:
        return PushResult(name, "already pushed", sha, size, key, None, seconds=time.monotonic() - t0)
    identity = read_identity(data, ctx.config.defaults.pg_bin_dir)
    check_identity(ctx, cluster, identity, spool)
    spool.prune()
    others = _ready_files(path.parent, name, spool, settings.push_parallel * BATCH_PER_THREAD)
    level = settings.compression_level
    with ThreadPoolExecutor(max_workers=settings.push_parallel, thread_name_prefix="wal-push") as pool:
        main = pool.submit(_push_one, ctx, cluster, path, level, spool, identity, (sha, size))
        extra = [(n, pool.submit(_push_one, ctx, cluster, path.parent / n, level, spool, identity)) for n in others]
        stored_mine = False
        try:
            mine = main.result()
            stored_mine = True
        except BaseException:
            for _n, fut in extra:   # the same cause would fail them too; the error below says it once
                fut.cancel()
            raise
        finally:
            pushed_others = []
            for n, fut in extra:
                if fut.cancelled():
                    continue
                try:
                    pushed_others.append(fut.result())
                except Exception as exc:  # noqa: BLE001 - PostgreSQL's own call for it reports it
                    msg = exc.message if isinstance(exc, DbopsError) else f"{type(exc).__name__}: {exc}"
                    pushed_others.append(PushedFile(n, "failed", error=msg))
                    if stored_mine:
                        log(f"warning: {n} (pushed alongside {name}) was not stored: {msg}")
    return PushResult(name, mine.outcome, sha, size, key, mine.stored_bytes, pushed_others, time.monotonic() - t0)


def _refuse_store_inside(ctx: FleetContext, data_dir: Path) -> None:
    """A file:// store inside the data directory (e.g. a relative url resolved there) would be
    copied by base backups and lost with the cluster."""
    loc = ctx.store.location(cluster_prefix("x"))
    if not loc.startswith("file://"):
        return
    real_data = Path(os.path.realpath(data_dir))
    where = Path(os.path.realpath(loc[len("file://"):]))
    if real_data == where or real_data in where.parents:
        raise ConfigError(f"the store {loc.rsplit('/wal/', 1)[0]} is inside the data directory {data_dir}",
                          "set storage.url to an absolute path (or S3) outside the data directory")
