"""A backup store in a local directory (or any mounted filesystem)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

from dbops_pipelines.errors import StorageError
from dbops_pipelines.storage.base import BackupStore, ObjectInfo

PARTIAL_SUFFIX = ".partial"


class LocalStore(BackupStore):
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise StorageError(f"refusing key outside the store: {key!r}")
        return path

    def location(self, key: str) -> str:
        return f"file://{self._path(key)}"

    def _put(self, key: str, chunks: Iterator[bytes], size_hint: int | None) -> None:
        final = self._path(key)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create {final.parent}: {exc}", "check the path and its permissions") from None
        # Written under a temporary name and renamed only when complete and synced, so a
        # crash or failure never leaves a partial file under the real name.
        tmp = final.with_name(f"{final.name}.{uuid.uuid4().hex[:8]}{PARTIAL_SUFFIX}")
        try:
            # 0600: the store's files are for the backup operator only.
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as fh:
                for chunk in chunks:
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
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
        with fh:
            while chunk := fh.read(chunk_size):
                yield chunk

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        if not self.root.exists():
            return []
        out = []
        for path in self.root.rglob("*"):
            if not path.is_file() or path.name.endswith(PARTIAL_SUFFIX):
                continue
            key = path.relative_to(self.root).as_posix()
            if key.startswith(prefix):
                st = path.stat()
                out.append(ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, timezone.utc)))
        return sorted(out, key=lambda o: o.key)

    def list_partials(self) -> list[Path]:
        """Leftovers of writers that were killed outright; retention sweeps them."""
        return sorted(self.root.rglob(f"*{PARTIAL_SUFFIX}")) if self.root.exists() else []

    def sweep_leftovers(self, older_than: timedelta) -> list[str]:
        cutoff = datetime.now(timezone.utc) - older_than
        swept = []
        for path in self.list_partials():
            if datetime.fromtimestamp(path.stat().st_mtime, timezone.utc) < cutoff:
                path.unlink(missing_ok=True)
                swept.append(str(path))
        return swept

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        self._prune_empty(path.parent)

    def _prune_empty(self, folder: Path) -> None:
        """Tidy empty backup folders, never the root itself."""
        while folder != self.root.resolve() and folder.exists() and not any(folder.iterdir()):
            folder.rmdir()
            folder = folder.parent

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()
