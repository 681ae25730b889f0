"""A backup store in a local directory (or any mounted filesystem)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

from dbops_pipelines.errors import ObjectExists, StorageError
from dbops_pipelines.storage.base import BackupStore, ObjectInfo

PARTIAL_SUFFIX = ".partial"


def _fsync_dir(path: Path) -> None:
    """Make ``path``'s entries (names created, linked, renamed or removed in it) durable: without
    it a crash of the store's host can lose a file whose put returned, and wal-push's exit 0
    lets PostgreSQL recycle the segment."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _makedirs_durably(folder: Path) -> None:
    """mkdir -p ``folder``, then fsync the parent of each directory it created (outermost first)."""
    created = []
    d = folder
    while not d.exists() and d.parent != d:
        created.append(d)
        d = d.parent
    folder.mkdir(parents=True, exist_ok=True)
    for d in reversed(created):
        _fsync_dir(d.parent)


class LocalStore(BackupStore):
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise StorageError(f"refusing key outside the store: {key!r}")
        return path

    def location(self, key: str) -> str:
        return f"file://{self._path(key)}"

    def _put(self, key: str, chunks: Iterator[bytes], size_hint: int | None, overwrite: bool) -> None:
        final = self._path(key)
        if not overwrite and final.exists():
            raise ObjectExists(f"{self.location(key)} already exists; nothing was written", "this is never overwritten: investigate who wrote it")
        try:
            _makedirs_durably(final.parent)
        except OSError as exc:
            raise StorageError(f"cannot create {final.parent}: {exc}", "check the path and its permissions") from None
        # Written under a temporary name and published only when complete and synced, so a
        # crash or failure never leaves a partial file under the real name.
        tmp = final.with_name(f"{final.name}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}")
        try:
            # 0600: the store's files are for the backup operator only.
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as fh:
                for chunk in chunks:
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            if overwrite:
                os.replace(tmp, final)
            else:
                # link() fails if the name exists: create-only even against a concurrent writer.
                os.link(tmp, final)
                tmp.unlink()
            # The new name (and the temporary one's removal) durable before the put returns.
            _fsync_dir(final.parent)
        except FileExistsError:
            tmp.unlink(missing_ok=True)
            raise ObjectExists(f"{self.location(key)} already exists; nothing was written", "this is never overwritten: investigate who wrote it") from None
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            self._prune_empty(final.parent)
            if isinstance(exc, OSError):
                raise StorageError(f"writing {final} failed: {exc}", "check free space and permissions") from exc
            raise

    def get(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        path = self._path(key)
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            raise StorageError(f"{self.location(key)} does not exist", "run `dbops backups list` to see what is stored") from None
        except OSError as exc:
            raise StorageError(f"cannot read {self.location(key)}: {exc}", "check the path and its permissions") from None
        with fh:
            while chunk := fh.read(chunk_size):
                yield chunk

    def _walk_root(self, prefix: str) -> Path:
        """The deepest directory that holds every key starting with ``prefix``: listing
        ``backups/app/`` walks that folder only, never the whole store."""
        folder = prefix.rpartition("/")[0]
        return self._path(folder) if folder else self.root

    def _files(self, prefix: str, partial: bool) -> Iterator[tuple[str, Path]]:
        start = self._walk_root(prefix)
        if not start.is_dir():
            return
        for dirpath, _dirs, files in os.walk(start):
            for name in files:
                if name.endswith(PARTIAL_SUFFIX) != partial:
                    continue
                path = Path(dirpath, name)
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    yield key, path

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        out = []
        for key, path in self._files(prefix, partial=False):
            try:
                st = path.stat()
            except FileNotFoundError:  # deleted while listing
                continue
            out.append(ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, timezone.utc)))
        return sorted(out, key=lambda o: o.key)

    def stat(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, timezone.utc)) if path.is_file() else None

    def sweep_leftovers(self, prefix: str, older_than: timedelta) -> list[str]:
        """Temporary files of writers killed outright (they are never visible as objects)."""
        cutoff = datetime.now(timezone.utc) - older_than
        swept = []
        for key, path in self._files(prefix, partial=True):
            try:
                if datetime.fromtimestamp(path.stat().st_mtime, timezone.utc) < cutoff:
                    path.unlink()
                    swept.append(key)
            except FileNotFoundError:
                continue
        return swept

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        self._prune_empty(path.parent)

    def _prune_empty(self, folder: Path) -> None:
        """Tidy empty backup folders, never the root itself."""
        while folder != self.root and folder.exists() and not any(folder.iterdir()):
            try:
                folder.rmdir()
            except OSError:  # a concurrent writer just put something in it
                return
            folder = folder.parent
