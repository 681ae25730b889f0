"""The spool: this host's private bookkeeping of one cluster's archive (what was stored, the
checked identity, prefetched segments), and the fast paths of wal-push and wal-fetch that need
nothing else (see the package docstring)."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from dbops_pipelines.errors import ConfigError, DbopsError
from dbops_pipelines.wal.naming import SEGMENT, cluster_prefix, is_wal_file

if TYPE_CHECKING:
    from dbops_pipelines.config import WalSettings
    from dbops_pipelines.storage.base import BackupStore

READ_CHUNK = 1 << 20
PUSHED_RECORD_DAYS = 3                # spool records of stored files are kept this long
PREFETCH_MAX_AGE_SECONDS = 3600       # prefetched files not asked for within an hour are dropped

Log = Callable[[str], None]


def quiet(_line: str) -> None:
    pass


# --- local files -----------------------------------------------------------------------------

def file_sha256(path: Path) -> tuple[str, int]:
    sha, size = hashlib.sha256(), 0
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(READ_CHUNK):
                sha.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise DbopsError(f"cannot read {path}: {exc.strerror or exc}",
                         "check that the file exists and that the user running PostgreSQL can read it") from None
    return sha.hexdigest(), size


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def private_dir(path: Path, create: bool = True) -> Path:
    """``path`` as a directory only this user can use (0700, owned by us, not a symlink):
    prefetched WAL in it is served to recovery, so nobody else may be able to put files there."""
    if create:
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the WAL spool {path}: {exc.strerror or exc}",
                              "set targets.<name>.wal.spool_dir to a directory the server's OS user may create") from None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise ConfigError(f"the WAL spool {path} is not a directory owned by this user (uid {os.geteuid()})",
                          "remove it, or set targets.<name>.wal.spool_dir to a private directory of the server's OS user")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


# --- the spool -------------------------------------------------------------------------------

def default_spool_root(cluster: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", cluster)
    return Path(tempfile.gettempdir()) / f"dbops-wal-{safe}-{os.geteuid()}"


def store_identity(store: BackupStore, cluster: str) -> str:
    """What tells this cluster's archive apart from any other: its location and, for S3, the
    endpoint and region, which ``location()`` omits. Two endpoints with the same bucket are two
    stores: sharing a spool, wal-push would answer "already pushed" after a switch of
    storage.s3_endpoint_url for segments the new store never received."""
    ident = store.location(cluster_prefix(cluster))
    endpoint = getattr(store, "endpoint_url", None)
    client_meta = getattr(getattr(store, "client", None), "meta", None)
    region = getattr(store, "region", None) or getattr(client_meta, "region_name", None)
    endpoint = endpoint if isinstance(endpoint, str) else None
    region = region if isinstance(region, str) else None
    if endpoint is None and region is None:
        return ident   # a local store: its path says it all (and the spools of earlier versions stay valid)
    return "\0".join([ident, f"endpoint={endpoint or ''}", f"region={region or ''}"])


class Spool:
    """Bookkeeping of one cluster's archive on this host (see the package docstring)."""

    def __init__(self, work: Path):
        self.work = work

    @classmethod
    def locate(cls, store: BackupStore, cluster: str, settings: WalSettings, data_dir: Path | None = None) -> Spool:
        root = Path(os.path.abspath(os.path.expanduser(settings.spool_dir))) if settings.spool_dir else default_spool_root(cluster)
        if data_dir is not None:
            data = Path(os.path.realpath(data_dir))
            real = Path(os.path.realpath(root))
            if real == data or data in real.parents:
                raise ConfigError(f"the WAL spool {root} is inside the data directory {data_dir}",
                                  "set targets.<name>.wal.spool_dir to a directory outside it (base backups copy the data directory)")
        tag = hashlib.sha256(store_identity(store, cluster).encode()).hexdigest()[:12]
        private_dir(root)
        return cls(private_dir(root / tag))

    @classmethod
    def existing(cls, work: Path) -> Spool | None:
        """The spool at ``work`` if it is there and private (the CLI's fast path); else None."""
        try:
            return cls(private_dir(work, create=False))
        except (OSError, DbopsError):
            return None

    def _sub(self, name: str) -> Path:
        return private_dir(self.work / name)

    # pushed files
    def pushed(self, name: str) -> str | None:
        try:
            return (self.work / "pushed" / name).read_text().strip() or None
        except OSError:
            return None

    def record_pushed(self, name: str, sha256: str) -> None:
        write_atomic(self._sub("pushed") / name, f"{sha256}\n".encode())

    # the identity check
    def identity(self) -> str | None:
        try:
            return (self.work / "identity").read_text().strip() or None
        except OSError:
            return None

    def record_identity(self, text: str) -> None:
        write_atomic(self.work / "identity", f"{text}\n".encode())

    # prefetched segments
    def segment_size(self) -> int | None:
        try:
            size = int((self.work / "segment_size").read_text())
        except (OSError, ValueError):
            return None
        return size if size > 0 and size & (size - 1) == 0 else None

    def record_segment_size(self, size: int) -> None:
        write_atomic(self.work / "segment_size", f"{size}\n".encode())

    def prefetch_dir(self) -> Path:
        return self._sub("prefetch")

    def has_prefetched(self, name: str) -> bool:
        return (self.work / "prefetch" / f"{name}.sha256").exists()

    def take_prefetched(self, name: str, dest: Path) -> bool:
        """Move a prefetched file to ``dest`` after checking its sha256 again; False if there is
        none (or it no longer matches, in which case it is dropped)."""
        folder = self.work / "prefetch"
        data, side = folder / name, folder / f"{name}.sha256"
        try:
            sha, size = side.read_text().split()
        except (OSError, ValueError):
            return False
        try:
            if file_sha256(data) != (sha, int(size)):
                return False          # changed since it was fetched: dropped, fetched again
            _place(data, dest, move=True)
            return True
        except (DbopsError, OSError, ValueError):
            return False
        finally:
            side.unlink(missing_ok=True)
            data.unlink(missing_ok=True)

    def prune(self) -> None:
        now = time.time()
        for sub, max_age in (("pushed", PUSHED_RECORD_DAYS * 86400), ("prefetch", PREFETCH_MAX_AGE_SECONDS)):
            try:
                entries = list(os.scandir(self.work / sub))
            except OSError:
                continue
            for e in entries:
                try:
                    if now - e.stat(follow_symlinks=False).st_mtime > max_age:
                        os.unlink(e.path)
                except OSError:
                    pass


def _place(src: Path, dest: Path, move: bool) -> None:
    """Put ``src``'s bytes at ``dest`` atomically (a temporary name beside it, then a rename);
    ``move``: rename ``src`` itself when it is on the same filesystem. No fsync: see fetch()."""
    tmp = dest.with_name(f".{dest.name}.dbops-{uuid.uuid4().hex[:8]}.tmp")
    try:
        moved = False
        if move:
            try:
                os.rename(src, tmp)
                moved = True
            except OSError:  # another filesystem: copy
                pass
        if not moved:
            with open(src, "rb") as fin, open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as fout:
                while chunk := fin.read(READ_CHUNK):
                    fout.write(chunk)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def fast_push_done(work: Path, wal_path: str | os.PathLike) -> bool:
    """True if the spool at ``work`` records that exactly this file's content is already stored:
    the cheap path of a wal-push call for a file an earlier call pushed in parallel."""
    path = Path(os.path.abspath(wal_path))
    if not is_wal_file(path.name):
        return False
    spool = Spool.existing(work)
    if spool is None:
        return False
    recorded = spool.pushed(path.name)
    if recorded is None:
        return False
    try:
        return file_sha256(path)[0] == recorded
    except DbopsError:
        return False


def fast_fetch_done(work: Path, name: str, dest_path: str | os.PathLike) -> bool:
    """True if a prefetched copy of ``name`` was checked and moved to ``dest_path``."""
    if not SEGMENT.fullmatch(name):
        return False
    spool = Spool.existing(work)
    return spool is not None and spool.take_prefetched(name, Path(os.path.abspath(dest_path)))
